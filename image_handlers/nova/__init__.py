"""The glue a patched Nova calls (see nova_patches/): Nova's image API as the
chain's image source, and the two hooks in its libvirt driver's image path.

These modules import Nova, so they load only where Nova is installed
(nova-compute, Nova's tests); nothing else in image_handlers imports them.
"""
