"""Building blocks of the ``shared_fs`` handler: Glance's filesystem store and
Nova's instance directory on one shared file system (XFS, btrfs, GlusterFS, NFS).

- ``mounts``: which mount (and file system) a path is on, from the kernel's view;
- ``reflink``: copy-on-write clones (FICLONE), and whether a file system has them;
- ``fiemap``: a file's extents, to prove that a clone shares them;
- ``paths``: the security gate from a ``file://`` location to an open source file;
- ``verdicts``: "this file was verified against this hash", kept per host;
- ``pins``: hardlinks that keep a Glance file's inode alive for overlays.

Nothing here reads nova.conf: every setting is a plain parameter.
"""
