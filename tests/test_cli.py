"""The ``vrtk`` command's behaviour as a Unix tool, run as a real process."""

from __future__ import annotations

import subprocess
import sys


def test_a_reader_that_stops_early_gets_no_traceback():
    """`vrtk models | head -1`: the pipe closes before vrtk writes; vrtk stops quietly, with SIGPIPE's status."""
    proc = subprocess.Popen([sys.executable, "-m", "vrtk", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line (vrtk takes a second to import)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert err == ""
