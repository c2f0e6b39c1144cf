"""iscsi_cor's parts: LUN specs and CHAP secrets, probing, reading a LUN at hash
speed (qemu-nbd + libnbd), attaching (qemu's userspace initiator or os-brick), the
fill job and the per-LUN verdicts."""
