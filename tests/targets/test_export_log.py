"""Third-party exporters print banners, progress bars and warnings: into a log, not the terminal."""

from __future__ import annotations

import os
import subprocess
import sys

from quantsweep.targets.ultralytics_baseline import _output_to


def test_native_output_goes_to_the_log_and_the_terminal_comes_back(tmp_path, capfd) -> None:
    log = tmp_path / "export.log"
    with _output_to(log):
        os.write(1, b"banner on stdout\n")
        os.write(2, b"warning on stderr\n")
        # a child process (as a native library writes): inherits the redirected descriptors
        subprocess.run([sys.executable, "-c", "print('progress from a child')"], check=True)
    os.write(1, b"back on the terminal\n")
    assert log.read_text().splitlines() == ["banner on stdout", "warning on stderr", "progress from a child"]
    assert capfd.readouterr().out == "back on the terminal\n"
