"""FeatInv training images per second: our design against the official one, on the tiny world (CPU).

Three step designs, identical in everything else (the same FeatInv, cached VAE latents, AdamW, fp32):

* ``ours``: a batch of images is drawn from memory; the classifier's features are computed for the
  whole batch inside the step (``no_grad``, eval mode); the prompt embedding is the one the base
  computed once at load time.
* ``per_sample_features``: ours, but the features come from a ``torch.utils.data.Dataset`` whose
  ``__getitem__`` runs the classifier on one image (as the official code extracts features per sample).
* ``official``: per-sample features, and the prompt encoded at every step for every item of the batch,
  as in diffusers' ``train_controlnet.py``. The tiny base has no text encoder (its prompt is a fixed
  ``[1, 1, 64]`` embedding), so the encoder's cost is emulated by a CLIP text model with random weights:
  CLIP's depth (12 layers) and sequence length (77 tokens), at the tiny base's cross-attention width
  (64, as CLIP-L's 768 is SD 1.x's), 4 heads, MLP 4x. Its output is computed and discarded: the UNet
  keeps the cached embedding, so the losses of the designs stay comparable.
* ``official_with_vae``: official, and the VAE latents encoded at every step as ``train_controlnet.py``
  does (our tiny-world trainer encodes the fixed training set once). Shown separately, since the
  brief's comparison is about features and prompt only.

The DataLoader runs in the main process (``num_workers=0``): on a 2-core machine, workers would take
the same cores from the step. Designs are interleaved step by step; medians over ``--repeats`` steps.
The goal is ours / official >= 3.

Usage:
    .venv/bin/python benchmarks/train_throughput.py [--batch 32] [--repeats 6] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

PAIRS = {"tinyworld-cnn": "tinyworld-cnn/stages.3", "tinyworld-vit": "tinyworld-vit/blocks.5"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classifiers", nargs="+", default=list(PAIRS))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--images", type=int, default=512, help="training images held in memory")
    p.add_argument("--repeats", type=int, default=6, help="timed steps per design")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per design first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see sampler_tradeoff.py)")
    return p.parse_args(argv)


class PerSampleFeatures(torch.utils.data.Dataset):
    """The official design's dataset: ``__getitem__`` runs the classifier on one image."""

    def __init__(self, images: torch.Tensor, latents: torch.Tensor, classifier, layer: str):
        self.images, self.latents, self.classifier, self.layer = images, latents, classifier, layer

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from workbench.metrics import extract_features

        x = self.images[i].float() / 255
        return x, self.latents[i], extract_features(self.classifier, x[None], self.layer)[0]


def clip_text_emulator(width: int):
    """A CLIP text encoder with random weights: 12 layers, 77 tokens, ``width`` channels."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=12,
                         num_attention_heads=4, max_position_embeddings=77)
    return CLIPTextModel(cfg).eval().requires_grad_(False)


def main(args: argparse.Namespace) -> dict:
    import workbench as wb
    from workbench.metrics import extract_features
    from workbench.training.common import TensorStream, tinyworld_images

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {}
    for name in args.classifiers:
        inv = wb.load_inverter(PAIRS[name])
        clf = wb.load_classifier(name).eval().requires_grad_(False)
        base = inv.base
        images, _ = tinyworld_images(args.images, split="train", seed=0)
        latents = base.encode(images.float() / 255)
        inv.controlnet.requires_grad_(True).train()
        opt = torch.optim.AdamW(inv.controlnet.parameters(), lr=1e-5)
        noise_sched = base.make_scheduler("ddpm")
        g = torch.Generator().manual_seed(0)
        text = clip_text_emulator(base.prompt_embeds.shape[-1])
        token_ids = torch.randint(0, 49408, (args.batch, 77), generator=g)

        stream = iter(TensorStream(images, latents, batch_size=args.batch, seed=0))
        loader = torch.utils.data.DataLoader(PerSampleFeatures(images, latents, clf, inv.layer),
                                             batch_size=args.batch, shuffle=True, num_workers=0, drop_last=True,
                                             generator=torch.Generator().manual_seed(0))

        def batches():
            while True:
                yield from loader
        per_sample = batches()

        def update(z0, f):
            loss = inv.training_loss(z0, f, noise_scheduler=noise_sched, generator=g)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(inv.controlnet.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        def ours():
            x, z0 = next(stream)
            with torch.no_grad():
                f = extract_features(clf, x.float() / 255, inv.layer, batch_size=len(x))
            update(z0, f)

        def per_sample_features():
            _, z0, f = next(per_sample)
            update(z0, f)

        def official():
            _, z0, f = next(per_sample)
            with torch.no_grad():
                text(token_ids)  # the prompt, encoded for every item at every step
            update(z0, f)

        def official_with_vae():
            x, _, f = next(per_sample)
            with torch.no_grad():
                text(token_ids)
                z0 = base.encode(x, sample=True, generator=g)
            update(z0, f)

        designs = {"ours": ours, "per_sample_features": per_sample_features, "official": official,
                   "official_with_vae": official_with_vae}
        times: dict[str, list[float]] = {k: [] for k in designs}
        for i in range(args.warmup + args.repeats):
            order = list(designs.items())
            order = order[i % len(order):] + order[:i % len(order)]  # rotate which goes first
            for key, fn in order:
                start = time.perf_counter()
                fn()
                if i >= args.warmup:
                    times[key].append(time.perf_counter() - start)
        ips = {k: args.batch / statistics.median(v) for k, v in times.items()}
        results[name] = ips
        print(f"{PAIRS[name]}, batch {args.batch}, CPU, {torch.get_num_threads()} thread(s), "
              f"{args.repeats} interleaved steps per design (medians)")
        for k, v in ips.items():
            print(f"  {k:20s} {v:7.2f} images/s   ({args.batch / v:.2f} s/step)")
        print(f"  ratio ours / official             = {ips['ours'] / ips['official']:.2f}  (goal >= 3)")
        print(f"  ratio ours / official_with_vae    = {ips['ours'] / ips['official_with_vae']:.2f}")
        print(f"  ratio ours / per_sample_features  = {ips['ours'] / ips['per_sample_features']:.2f}  "
              f"(batched features alone)")
    return results


if __name__ == "__main__":
    main(parse_args())
