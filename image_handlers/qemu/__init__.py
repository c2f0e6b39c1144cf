"""qemu-img, as the handlers use it: inspect, make overlays, fill them."""
