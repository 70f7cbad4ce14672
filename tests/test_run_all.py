"""run_all.sh's guard against resuming on results of other demo weights (no framework is run here)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from conftest import needs_assets

REPO = Path(__file__).resolve().parent.parent


def _run_all(results: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), "--results", str(results), "--frameworks", "none"],
                          capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"}, timeout=300)


@needs_assets
def test_resuming_on_results_of_other_demo_weights_is_refused(tmp_path):
    results = tmp_path / "results"
    first = _run_all(results)
    fingerprint = (results / "demo_fingerprint").read_text()
    assert first.returncode == 0, first.stderr
    assert _run_all(results).returncode == 0  # same weights: resumes
    (results / "demo_fingerprint").write_text("0" * 32 + "\n")  # as if the tables came from other weights
    assert _run_all(results).returncode == 0  # no raw results to mix up: nothing to refuse
    assert (results / "demo_fingerprint").read_text() == fingerprint
    (results / "demo_fingerprint").write_text("0" * 32 + "\n")
    (results / "vlmeval").mkdir()
    refused = _run_all(results)
    assert refused.returncode == 1 and "other demo weights" in refused.stderr and "--results NEW_DIR" in refused.stderr
