"""Query media kept for the knowledge-gap review (ui/feedback.py ``keep_media``): content-addressed copies, written
atomically (a temp file per writer), streamed, and never a half file — also when two chats keep the same photo."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from ui.feedback import GAP_MEDIA, FeedbackLog


def test_keep_media_is_content_addressed_and_whole(tmp_path: Path) -> None:
    log = FeedbackLog(tmp_path / "data" / "feedback.sqlite3")
    data = os.urandom(3 << 20)
    a = tmp_path / "a.JPG"
    a.write_bytes(data)
    b = tmp_path / "copy.jpg"
    b.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()  # independent: the name is the SHA-256 of the bytes
    got: list[list[str]] = []
    threads = [threading.Thread(target=lambda p=p: got.append(log.keep_media([str(p)]))) for p in (a, b, a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [[f"{GAP_MEDIA}/{digest}.jpg"]] * 4
    folder = tmp_path / "data" / GAP_MEDIA
    assert [p.name for p in folder.iterdir()] == [f"{digest}.jpg"]  # one copy, no temp file left
    assert (folder / f"{digest}.jpg").read_bytes() == data
    # missing and oversized files are left out (the gap is still logged), others kept
    big = tmp_path / "big.mp4"
    with open(big, "wb") as f:
        f.truncate(60 * 1024 * 1024)
    small = tmp_path / "s.png"
    small.write_bytes(b"png-bytes")
    assert log.keep_media([str(tmp_path / "gone.png"), str(big), str(small)]) == [
        f"{GAP_MEDIA}/{hashlib.sha256(b'png-bytes').hexdigest()}.png"]
