"""What proves an image's bytes, on every path: its recorded hash and, when asked
for, its signature (``img_signature*``, checked with cursive as Nova checks it).

``expectation.expect`` turns an image record and the host's policy into the one
``Expectation`` every handler must meet; copies verify it in the same pass as
they copy, zero-copy handlers verify a source once per identity and record the
verdict (``verdicts``), so later disks of the same source stay O(1).
"""
