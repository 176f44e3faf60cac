"""The README's runtime example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_runtime_example_runs(tmp_path, monkeypatch, capsys) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    (example,) = [b for b in blocks if "rt.Scheduler" in b]
    monkeypatch.chdir(tmp_path)  # the example writes jobs.sqlite in the working directory
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102 - the project's own documentation
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert accuracy > 0.95
    sched = namespace["sched"]
    assert sorted(n for r in sched.results() for n in r.nodes) == sorted(sched.nodes)  # redundancy 2: both nodes ran it
    sched.executor.close()
