"""Train a tiny-world classifier (``workbench train-classifier``).

    workbench train-classifier --name tinyworld-cnn --out runs/cnn --steps 3000 [--resume] [--ship data]

Cross-entropy (no label smoothing by default: the base's quality criterion asks the CNN for p > 0.9, which
smoothing of 0.1 all but rules out; the first shipped CNN, trained with it, was that confident on only 39% of
real test images), AdamW, warm-up + cosine LR, through ``accelerate``. The training images are rendered once
into memory (uint8); light augmentation is unnecessary because the world's factors already vary position,
size, rotation, colour and background. ``--init-from DATA`` continues from shipped weights.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from .common import (Steps, Timer, TensorStream, add_common_args, command_line, cosine_lr, init_card,
                     load_checkpoint, make_accelerator, save_checkpoint, tinyworld_images)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="workbench train-classifier", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="tinyworld-cnn or tinyworld-vit")
    p.add_argument("--train-size", type=int, default=50_000, help="tiny-world training images")
    p.add_argument("--test-size", type=int, default=2000, help="fresh test-split images for the card's accuracy")
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--arch", default=None, help="JSON of architecture overrides (tests use tiny widths)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="cross-entropy label smoothing (0: the model may become confident, which the base's "
                        "'p > 0.9' quality criterion needs; 0.1 caps the target at 0.91)")
    p.add_argument("--init-from", default=None,
                   help="start from these weights (a data folder holding NAME.safetensors) instead of random ones")
    return add_common_args(p, steps=3000, batch_size=128, lr=2e-3).parse_args(argv)


@torch.no_grad()
def accuracy(clf, images_u8: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    """Top-1 accuracy of ``clf`` on uint8 images ``[N, 3, H, W]``."""
    clf.eval()
    correct = 0
    dev = next(clf.parameters()).device
    for s in range(0, len(labels), batch):
        x = images_u8[s:s + batch].to(dev).float() / 255
        correct += (clf(x).argmax(1).cpu() == labels[s:s + batch].cpu()).sum().item()
    return correct / len(labels)


@torch.no_grad()
def confident_fraction(clf, images_u8: torch.Tensor, threshold: float = 0.9, batch: int = 512) -> float:
    """Share of uint8 images ``[N, 3, H, W]`` to which ``clf`` gives some class a probability above ``threshold``
    (on real images: the ceiling of the base's sample-quality criterion)."""
    clf.eval()
    dev = next(clf.parameters()).device
    hits = 0
    for s in range(0, len(images_u8), batch):
        p = clf(images_u8[s:s + batch].to(dev).float() / 255).softmax(-1)
        hits += (p.max(-1).values > threshold).sum().item()
    return hits / len(images_u8)


def main(args) -> dict:
    import json
    from pathlib import Path

    from .. import zoo
    from ..models import create_classifier
    from ..weights import card_path, load_state, save_state, weights_path, write_card

    timer = Timer()
    acc = make_accelerator(args)
    torch.manual_seed(args.seed)
    overrides = json.loads(args.arch) if args.arch else {}
    clf = create_classifier(args.name, **overrides)
    if args.init_from:
        state = load_state(weights_path(args.name, Path(args.init_from)))
        try:
            clf.model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise SystemExit(f"--init-from {args.init_from}: {weights_path(args.name, Path(args.init_from))} does "
                             f"not fit {args.name} with --arch {args.arch!r}: {str(e).splitlines()[0]}") from e
    opt = torch.optim.AdamW(clf.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = cosine_lr(opt, warmup=min(200, args.steps // 10), total=args.steps)
    images, labels = tinyworld_images(args.train_size, split="train", seed=args.seed, device=acc.device,
                                      progress=args.progress)
    stream = TensorStream(images, labels, batch_size=args.batch_size, seed=args.seed)
    start = 0
    if args.resume:
        st = load_checkpoint(args.out, modules={"model": clf}, optimizer=opt, lr_scheduler=sched)
        if st is not None:
            start = st["step"]
            print(f"resumed from step {start} of {args.out}", flush=True)
            stream.load_state_dict(st["extra"]["stream"])
    clf, opt = acc.prepare(clf, opt)
    it = iter(stream)
    loop = Steps(start, args.steps, desc=args.name, max_minutes=args.max_minutes, lr_scheduler=sched,
                 progress=args.progress)
    clf.train()
    for step in loop:
        x, y = next(it)
        with acc.accumulate(clf):
            loss = F.cross_entropy(clf(x.float() / 255), y, label_smoothing=args.label_smoothing)
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        loop.log(loss=loss.item())
        if loop.should_save(step, args.save_every):
            acc.wait_for_everyone()
            if acc.is_main_process:
                save_checkpoint(args.out, step=step + 1, modules={"model": acc.unwrap_model(clf)}, optimizer=opt,
                                lr_scheduler=sched, extra={"stream": stream.state_dict()})
    model = acc.unwrap_model(clf)
    test_x, test_y = tinyworld_images(args.test_size, split="test", seed=args.seed, device=acc.device)
    test_acc = accuracy(model, test_x, test_y)
    confident = confident_fraction(model, test_x)
    spec = zoo.SHIPPED_CLASSIFIERS[args.name]
    card = {
        "name": args.name, "architecture": spec["architecture"], "arch_args": {**spec["arch_args"], **overrides},
        "mean": zoo.TINY_MEAN, "std": zoo.TINY_STD, "input_size": zoo.TINY_INPUT_SIZE,
        "layers": spec["layers"],
        "training": {"command": command_line(), "seed": args.seed, "steps": loop.total, "batch_size": args.batch_size,
                     "train_images": args.train_size, "label_smoothing": args.label_smoothing,
                     "init_from": args.init_from, "mixed_precision": args.mixed_precision,
                     "wall_time_s": timer.seconds, "device": str(acc.device)},
        "metrics": {"test_accuracy": round(test_acc, 4), "test_confident_fraction": round(confident, 4),
                    "test_images": args.test_size, "test_split_seed": args.seed},
    }
    if args.init_from and (prev := init_card(card_path(args.name, Path(args.init_from)))):  # starting card
        card["training"]["init_card"] = prev
    if acc.is_main_process:
        out = Path(args.out)
        save_state(model.model, weights_path(args.name, out), fp16=False)
        write_card(args.name, card, out)
        if args.ship:
            save_state(model.model, weights_path(args.name, Path(args.ship)), fp16=True)
            write_card(args.name, card, Path(args.ship))
    print(f"{args.name}: test accuracy {test_acc:.4f} after {loop.total} steps, {timer.seconds} s")
    return card


if __name__ == "__main__":
    main(parse_args())
