"""Train the factor reader (``workbench train-factor-reader``), the judge that reads every factor of an image.

    workbench train-factor-reader --out runs/reader --steps 3000 [--resume] [--ship data]

The reader (:class:`workbench.factor_reader.FactorReader`) learns on real renders of the tiny world's training
split, drawn with its own seed (:data:`~workbench.factor_reader.READER_SEED`), with the loss of
:func:`~workbench.factor_reader.reader_loss`. No augmentation: it must read hue and saturation exactly as rendered.
The card records its score on fresh test images (accuracy for classes, error in spread units for the rest): the
ceiling an inversion can reach.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..factor_reader import READER_NAME, READER_SEED, FactorReader, factor_errors, reader_loss
from ..tinyworld import TinyWorld
from .common import (RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, check_resume, command_line,
                     loop_generator, optimiser_step, parse_config, process_of, resume_run, save_if_due, start_run,
                     tinyworld_images)


@dataclass(kw_only=True)
class ReaderConfig(RunConfig):
    """What ``workbench train-factor-reader`` takes: one field per flag."""

    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = READER_SEED

    train_images: int = 50_000  # tiny-world training images (drawn with --seed), rendered once into memory
    test_images: int = 2000  # fresh test-split images for the card's scores (the ceiling)
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    arch: dict | None = None  # overrides of the reader's ConvNeXt (JSON; tests use tiny widths)

    run_keys = ("arch",)
    positive = RunConfig.positive + ("train_images", "test_images")


def parse_args(argv=None) -> ReaderConfig:
    return parse_config(ReaderConfig, argv, prog="workbench train-factor-reader", description=__doc__)


def train(config: ReaderConfig, acc, reader: FactorReader) -> tuple[FactorReader, Steps]:
    """The loop: each step reads a batch of real renders and learns their true factors."""
    opt, sched = adamw_with_schedule(reader.parameters(), config, weight_decay=config.weight_decay)
    images, _ = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                 progress=config.progress and acc.is_main_process)
    factors = {k: v.to(acc.device) for k, v in TinyWorld("train", size=config.train_images, seed=config.seed)
               .factors.items()}
    rank, world = process_of(acc)
    index = torch.arange(config.train_images, device=acc.device)
    stream = TensorStream(images, index, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    state = resume_run(config, modules={"model": reader}, optimizer=opt, lr_scheduler=sched, stream=stream, acc=acc)
    g = loop_generator(config, acc, state)
    model, opt = acc.prepare(reader, opt)
    it = iter(stream)
    loop = Steps(state["step"] if state else 0, config.steps, desc="factor reader", max_minutes=config.max_minutes,
                 lr_scheduler=sched, progress=config.progress, acc=acc)
    model.train()
    for step in loop:
        x, idx = next(it)
        with acc.accumulate(model):
            loss = reader_loss(reader, model(x.float() / 255), {k: v[idx] for k, v in factors.items()})
            optimiser_step(acc, loss, model, opt, sched)
        loop.log(loss=loss.item())
        save_if_due(loop, step, acc, config, modules={"model": acc.unwrap_model(model)}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict()}, generator=g)
    return acc.unwrap_model(model), loop


def ceiling(reader: FactorReader, num_images: int, *, seed: int = 0, device="cpu") -> dict[str, float]:
    """The reader's scores on ``num_images`` real test images: accuracy for classes, mean error in spread units
    (NaN-skipping: rotation is not scored for circles and rings) for the rest."""
    ds = TinyWorld("test", size=num_images, seed=seed)
    errors = factor_errors(reader.eval().read(ds.images().to(device)), ds.factors)
    return {k: round(float(v.nanmean()), 4) for k, v in errors.items()}


def main(config: ReaderConfig) -> dict:
    """Train, measure the ceiling on fresh test images, and write weights and card into ``config.out`` (and
    ``config.ship``)."""
    from ..weights import save_state, weights_path, write_card

    check_resume(config, what=READER_NAME)
    timer = Timer()
    config, acc = start_run(config)
    reader, loop = train(config, acc, FactorReader(config.arch))
    card = {"name": READER_NAME, "arch": reader.arch,
            "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                         "batch_size": config.batch_size, "train_images": config.train_images,
                         "mixed_precision": config.mixed_precision, "wall_time_s": timer.seconds,
                         "device": str(acc.device)}}
    if acc.is_main_process:
        card["ceiling"] = ceiling(reader, config.test_images, device=acc.device)
        card["ceiling_note"] = ("scores on real test images (seed 0): accuracy for shape, background, distractor; "
                                "mean absolute error in units of the factor's spread for the rest")
        save_state(reader.model, weights_path(READER_NAME, Path(config.out)), fp16=False)
        write_card(READER_NAME, card, Path(config.out))
        if config.ship:
            save_state(reader.model, weights_path(READER_NAME, Path(config.ship)), fp16=True)
            write_card(READER_NAME, card, Path(config.ship))
        print(f"{READER_NAME}: ceiling {card['ceiling']} after {loop.total} steps")
    acc.wait_for_everyone()
    return card


if __name__ == "__main__":
    main(parse_args())
