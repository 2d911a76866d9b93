"""Every command the README shows runs as written after its install line: each entry-point command
composes (Hydra's `--cfg job` check, in process), and the training ones pass the config checks a run
makes before loading data; the tools it names exist in the virtual environment."""

from __future__ import annotations

import re
import shlex
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from recsys_lightning.validation import check_training_config

from helpers import ROOT, compose_config, training_config

ENTRY = re.compile(r"^(?:srun )?\.venv/bin/python -m recsys_lightning\.(train|recommend|evaluate|prepare) ?(.*)$")
NEEDS_FILES = ("pretrained_from=", "data.path=", "data.train_path=", "trainer=ddp")  # files or GPUs a test machine lacks
ABSENT = object()


TORCHRUN = re.compile(r"^\.venv/bin/torchrun .*? -m (recsys_lightning\.)")  # its options, then the module it runs


def readme_commands() -> list[str]:
    """Commands of the README's bash blocks, comments cut, lines continued with a backslash joined."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


def entry_commands() -> list[str]:
    """Entry-point commands, a torchrun one as the python command each of its processes runs."""
    commands = [TORCHRUN.sub(r".venv/bin/python -m \1", line) for line in readme_commands()]
    return [line for line in commands if ENTRY.match(line) and "<" not in line]


def test_every_command_uses_the_virtual_environment():
    """The install line does not activate .venv, so a bare `python` or `tensorboard` would not find the project."""
    bare = [line for line in readme_commands() if re.match(r"^(srun )?(python|tensorboard|pip)\b", line)]
    assert bare == []
    tools = {Path(word).name for line in readme_commands() for word in line.split() if word.startswith(".venv/bin/")}
    assert {"python", "tensorboard", "pip"} <= tools
    # What the project's install puts in its environment's bin/: read from the installed packages' metadata,
    # so the answer is the same however pytest was started (.venv/bin/python, a bare pytest, another venv).
    installed = {entry.name for entry in entry_points(group="console_scripts")} | {"python"}
    assert sorted(tools - installed) == []


@pytest.mark.parametrize("line", entry_commands())
def test_readme_command_composes(line, tmp_path):
    entry, rest = ENTRY.match(line).groups()
    words = [
        word.replace("$RUN", str(tmp_path)).replace("$RERANKER", str(tmp_path)).replace("$RETRIEVER", str(tmp_path))
        for word in shlex.split(rest)
    ]
    sweep = "-m" in words
    # a sweep composes as each of its jobs: the first value of every swept key stands for the rest
    overrides = [re.sub(r"=([^\[,]+),.*$", r"=\1", word) if sweep else word for word in words if word != "-m"]
    if entry != "train":
        cfg = compose_config(entry, *overrides, return_hydra_config=True)
        assert not_applied(cfg, overrides) == []
        return
    cfg = training_config(*overrides, run_dir=tmp_path / "run", return_hydra_config=True)
    assert not_applied(cfg, overrides) == []
    if not any(word.startswith(NEEDS_FILES) for word in overrides):
        check_training_config(cfg)  # raises ConfigError with the one line a user would see


def not_applied(cfg, overrides: list[str]) -> list[str]:
    """The overrides the composed config does not show: a group not chosen, a key not set or not removed."""
    missed = []
    for word in overrides:
        key, _, value = word.lstrip("+").partition("=")
        if key.startswith("~"):
            shown = OmegaConf.select(cfg, key[1:]) is None
        elif key in cfg.hydra.runtime.choices:
            shown = cfg.hydra.runtime.choices[key] == value
        else:
            shown = OmegaConf.select(cfg, key, default=ABSENT) is not ABSENT
        if not shown:
            missed.append(word)
    return missed


def test_the_commands_are_found():
    """The extraction itself: the README's main job, a sweep, serving and evaluation are all among them."""
    commands = entry_commands()
    assert ".venv/bin/python -m recsys_lightning.train" in commands
    assert any(" -m model=" in line for line in commands)
    assert any("recsys_lightning.recommend" in line for line in commands) and any("recsys_lightning.evaluate" in line for line in commands)
    assert len(commands) > 25


def test_the_scripts_it_names_exist():
    """Benchmarks and checks are named inline (`.venv/bin/python bench/<script>.py`), not in bash blocks."""
    scripts = set(re.findall(r"\.venv/bin/python ((?:bench|tests)/\w+\.py)", (ROOT / "README.md").read_text()))
    assert "bench/check_hparams_tab.py" in scripts and len(scripts) >= 8
    assert [script for script in sorted(scripts) if not (ROOT / script).is_file()] == []
