"""The README's Python example runs as written (with a smaller budget)."""

from __future__ import annotations

import re
from pathlib import Path


def test_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    assert "50_000" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code.replace("50_000", "2048"), "README.md", "exec"), namespace)
    assert namespace["result"].metrics[-1]["step"] == 2048
    assert (tmp_path / "reward.safetensors").exists() and (tmp_path / "pendulum_ppo.zip").exists()


def test_readme_own_loop_example_learns_the_lexicographic_optimum(capsys) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, re.S)[1]
    assert "heron.HeronLoop(" in code
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["logits"].argmax(axis=1).tolist() == [0, 1]
    assert capsys.readouterr().out.strip() == "[0 1]"
