"""Shared set-up of the bad-input battery: one tiny trained text run and image run, both exported, and a runner
that calls an entry point's main() in-process and returns (exit code, stderr+stdout as one line)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from conftest import image_config, text_config, validated, write_config, write_csv, write_digit_folder


@dataclass
class World:
    root: Path
    text: dict  # train/validation/test CSVs
    digits: dict  # train/validation/test class folders
    text_run: Path
    image_run: Path
    text_model: Path  # saved_models/<name> of the text run
    image_model: Path

    def text_cfg(self, name="cfg.yaml", **overrides) -> list[str]:
        """--config args of a valid tiny text run writing into the shared runs folder."""
        config = text_config(
            self.text,
            self.root,
            training={"epochs": 1, "steps_per_epoch": 1, "early_stopping": {"enabled": False}},
            **overrides,
        )
        return ["--config", str(write_config(self.root / "configs", config, name))]

    def image_cfg(self, name="icfg.yaml", **overrides) -> list[str]:
        config = image_config(self.digits, self.root, training={"epochs": 1, "steps_per_epoch": 1}, **overrides)
        return ["--config", str(write_config(self.root / "configs", config, name))]

    def file(self, name: str, content: str | bytes) -> str:
        path = self.root / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)


def build_world(root: Path) -> World:
    from conftest import keyword_texts
    from tfsft.export import export_run
    from tfsft.trainer import train

    (root / "configs").mkdir(parents=True)
    text = {
        split: str(write_csv(root / "data" / f"{split}.csv", keyword_texts(n, seed)))
        for split, n, seed in (("train", 48, 0), ("validation", 16, 1), ("test", 16, 2))
    }
    digits = {
        split: str(write_digit_folder(root / "digits" / split, [0, 1, 2], per_class=6, offset=offset))
        for split, offset in (("train", 0), ("validation", 6), ("test", 12))
    }
    # The shared runs only need a model to load: no validation/test split and one sequence length keep their
    # graph tracing (most of their cost) small.
    alone = {"validation": None, "test": None, "split": {"validation": 0.0, "test": 0.0}}
    text_run = train(
        validated(
            text_config(
                text,
                root,
                data={"train": text["train"], **alone},
                text={"max_length": 16},
                training={"epochs": 1, "steps_per_epoch": 1, "early_stopping": {"enabled": False}},
            )
        ),
        verbose=0,
    ).run_dir
    image_run = train(
        validated(
            image_config(
                digits, root, data={"train": digits["train"], **alone}, training={"epochs": 1, "steps_per_epoch": 1}
            )
        ),
        verbose=0,
    ).run_dir
    base = root / "saved_models"
    text_model = export_run(text_run, base, verify=False).parent
    image_model = export_run(image_run, base, verify=False).parent
    return World(root, text, digits, text_run, image_run, text_model, image_model)


def digest(world: World) -> dict:
    """Every file (and folder) under the runs and saved_models folders, with its content hash."""
    out = {}
    for top in (world.root / "runs", world.root / "saved_models"):
        for path in sorted(top.rglob("*")):
            out[str(path.relative_to(world.root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            )
    return out


def call(capsys, module: str, args: list[str]) -> tuple[int, str]:
    """Run `python -m tfsft.<module>` in-process; argparse refusals (SystemExit) count like returned codes."""
    import importlib

    main = importlib.import_module(f"tfsft.{module}").main
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, " ".join((captured.err + " " + captured.out).split())
