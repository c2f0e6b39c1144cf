"""Ceph RBD access shared by the rbd_clone handler and the RBD copy source."""
