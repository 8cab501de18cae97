"""Train a tiny-world classifier (``workbench train-classifier``).

    workbench train-classifier --name tinyworld-cnn --out runs/cnn --steps 3000 [--resume] [--ship data]
    workbench train-classifier --name tinyworld-judge-resnet --augment --seed 11 --out runs/judge-resnet ...

Cross-entropy (no label smoothing by default: the base's quality criterion asks the CNN for p > 0.9, which
smoothing of 0.1 all but rules out), AdamW, warm-up + cosine LR, through ``accelerate``. The training images are
rendered once into memory (uint8); the inverted classifiers need no augmentation because the world's factors already
vary position, size, rotation, colour and background. The judges (``tinyworld-judge-*``) are trained with
``--augment``: colour and texture augmentation (:mod:`workbench.training.augment`), so that they read shape and
layout rather than tint. ``--init-from DATA`` continues from shipped weights.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import ArgumentValueError
from .augment import augment, colour_texture_augmentation
from .common import (RunConfig, Steps, Timer, TensorStream, adamw_with_schedule, check_resume, command_line,
                     init_card, loop_generator, optimiser_step, parse_config, process_of, resume_run, save_if_due,
                     start_run, tinyworld_images)


@dataclass(kw_only=True)
class ClassifierConfig(RunConfig):
    """What ``workbench train-classifier`` takes: one field per flag (``--train-images`` is ``train_images``)."""

    # RunConfig's fields with this script's defaults
    steps: int = 3000
    batch_size: int = 128
    lr: float = 2e-3

    name: str  # tinyworld-cnn, tinyworld-vit, or a judge (tinyworld-judge-resnet, -convnext, -vit)
    train_images: int = 50_000  # tiny-world training images, rendered once into memory
    test_images: int = 2000  # fresh test-split images for the card's accuracy
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    arch: dict | None = None  # architecture overrides of the zoo's (JSON on the command line; tests use tiny widths)
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0: the model may become confident, which the
    # base's 'p > 0.9' quality criterion needs; 0.1 caps the target at 0.91)
    init_from: str | None = None  # start from these weights (a data folder holding NAME.safetensors) instead of
    # random ones
    augment: bool = False  # colour and texture augmentation (the judges': hue, channel shuffle, grey, noise, blur)

    run_keys = ("name", "arch", "augment")
    positive = RunConfig.positive + ("train_images", "test_images")

    def check(self) -> None:
        super().check()
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise ArgumentValueError(f"--label-smoothing {self.label_smoothing!r}: must be in [0, 1)")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ArgumentValueError(f"--weight-decay {self.weight_decay!r}: must be >= 0")


def parse_args(argv=None) -> ClassifierConfig:
    return parse_config(ClassifierConfig, argv, prog="workbench train-classifier", description=__doc__)


@torch.no_grad()
def accuracy(clf, images_u8: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``clf`` on uint8 images ``[N, 3, H, W]``."""
    clf.eval()
    correct = 0
    dev = next(clf.parameters()).device
    for s in range(0, len(labels), batch_size):
        x = images_u8[s:s + batch_size].to(dev).float() / 255
        correct += (clf(x).argmax(1).cpu() == labels[s:s + batch_size].cpu()).sum().item()
    return correct / len(labels)


@torch.no_grad()
def confident_fraction(clf, images_u8: torch.Tensor, threshold: float = 0.9, batch_size: int = 512) -> float:
    """Share of uint8 images ``[N, 3, H, W]`` to which ``clf`` gives some class a probability above ``threshold``
    (on real images: the ceiling of the base's sample-quality criterion)."""
    clf.eval()
    dev = next(clf.parameters()).device
    hits = 0
    for s in range(0, len(images_u8), batch_size):
        p = clf(images_u8[s:s + batch_size].to(dev).float() / 255).softmax(-1)
        hits += (p.max(-1).values > threshold).sum().item()
    return hits / len(images_u8)


def build_classifier(config: ClassifierConfig):
    """The classifier to train: the zoo's architecture with ``config.arch``'s overrides, from ``init_from``'s
    weights when given."""
    from ..models import create_classifier
    from ..weights import load_state, weights_path

    clf = create_classifier(config.name, **(config.arch or {}))
    if config.init_from:
        path = weights_path(config.name, Path(config.init_from))
        try:
            clf.model.load_state_dict(load_state(path), strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--init-from {config.init_from}: {path} does not fit {config.name} with --arch "
                             f"{json.dumps(config.arch)!r}: {str(e).splitlines()[0]}") from e
    return clf


def train(config: ClassifierConfig, acc, clf) -> tuple[torch.nn.Module, Steps]:
    """The training loop (resumed from ``config.out``'s checkpoint with ``config.resume``); returns the trained
    classifier (unwrapped) and the finished loop. Each process trains on its own share of every global batch."""
    opt, sched = adamw_with_schedule(clf.parameters(), config, weight_decay=config.weight_decay)
    images, labels = tinyworld_images(config.train_images, split="train", seed=config.seed, device=acc.device,
                                      progress=config.progress and acc.is_main_process)
    rank, world = process_of(acc)
    stream = TensorStream(images, labels, batch_size=config.batch_size, seed=config.seed, rank=rank, world=world)
    state = resume_run(config, modules={"model": clf}, optimizer=opt, lr_scheduler=sched, stream=stream, acc=acc)
    g = loop_generator(config, acc, state)
    clf, opt = acc.prepare(clf, opt)
    it = iter(stream)
    loop = Steps(state["step"] if state else 0, config.steps, desc=config.name, max_minutes=config.max_minutes,
                 lr_scheduler=sched, progress=config.progress, acc=acc)
    aug = colour_texture_augmentation() if config.augment else None
    clf.train()
    for step in loop:
        x, y = next(it)
        x = x.float() / 255
        if aug is not None:
            x = augment(aug, x)
        with acc.accumulate(clf):
            loss = F.cross_entropy(clf(x), y, label_smoothing=config.label_smoothing)
            optimiser_step(acc, loss, clf, opt, sched)
        loop.log(loss=loss.item())
        save_if_due(loop, step, acc, config, modules={"model": acc.unwrap_model(clf)}, optimizer=opt,
                    lr_scheduler=sched, extra={"stream": stream.state_dict()}, generator=g)
    return acc.unwrap_model(clf), loop


def main(config: ClassifierConfig) -> dict:
    """Train, measure on fresh test images, write weights and card into ``config.out`` (and ``config.ship``).
    Under several processes the main one measures and writes; the others return the card without metrics."""
    from .. import zoo

    check_resume(config, what=config.name)
    timer = Timer()
    config, acc = start_run(config)
    model, loop = train(config, acc, build_classifier(config))
    spec = zoo.TINY_CLASSIFIERS[config.name]
    card = {
        "name": config.name, "architecture": spec["architecture"],
        "arch_args": {**spec["arch_args"], **(config.arch or {})},
        "mean": zoo.TINY_MEAN, "std": zoo.TINY_STD, "input_size": zoo.TINY_INPUT_SIZE,
        "layers": spec["layers"],
        "training": {"command": command_line(), "seed": config.seed, "steps": loop.total,
                     "batch_size": config.batch_size, "processes": acc.num_processes,
                     "train_images": config.train_images, "label_smoothing": config.label_smoothing,
                     "augment": config.augment,
                     "init_from": config.init_from, "mixed_precision": config.mixed_precision,
                     "wall_time_s": timer.seconds, "device": str(acc.device)},
    }
    if acc.is_main_process:
        write_classifier(config, acc, model, card, loop)
    acc.wait_for_everyone()  # the weights are there for every process to read
    return card


def write_classifier(config: ClassifierConfig, acc, model, card: dict, loop: Steps) -> None:
    """Measure ``model`` on fresh test images into ``card`` and write weights and card (the main process)."""
    from ..weights import card_path, save_state, weights_path, write_card

    test_x, test_y = tinyworld_images(config.test_images, split="test", seed=config.seed, device=acc.device)
    test_acc = accuracy(model, test_x, test_y)
    card["metrics"] = {"test_accuracy": round(test_acc, 4),
                       "test_confident_fraction": round(confident_fraction(model, test_x), 4),
                       "test_images": config.test_images, "test_split_seed": config.seed}
    if config.init_from and (prev := init_card(card_path(config.name, Path(config.init_from)))):  # starting card
        card["training"]["init_card"] = prev
    save_state(model.model, weights_path(config.name, Path(config.out)), fp16=False)
    write_card(config.name, card, Path(config.out))
    if config.ship:
        save_state(model.model, weights_path(config.name, Path(config.ship)), fp16=True)
        write_card(config.name, card, Path(config.ship))
    print(f"{config.name}: test accuracy {test_acc:.4f} after {loop.total} steps, {card['training']['wall_time_s']} s")


if __name__ == "__main__":
    main(parse_args())
