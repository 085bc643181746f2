"""invedit.outputs: atomic groups of files, safe output folders."""

from __future__ import annotations


def test_concurrent_writers_of_one_output_leave_a_consistent_pair(tmp_path):
    """Many threads write different (image, record) groups to the same names: whatever is left is one group."""
    import hashlib
    import threading

    from invedit.outputs import write_atomically

    out = tmp_path / "x.png"

    def writer(k: int) -> None:
        for _ in range(20):
            data = bytes([k]) * (1000 + k)
            write_atomically([(out, lambda f, d=data: f.write(d)),
                              (out.with_suffix(".json"), lambda f, d=data: f.write(hashlib.sha256(d).digest()))])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hashlib.sha256(out.read_bytes()).digest() == out.with_suffix(".json").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.png"]
