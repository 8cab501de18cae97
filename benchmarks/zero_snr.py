"""Do more DDIM steps stop hurting on a zero-terminal-SNR v-prediction base (Lin et al. 2024)?

On the shipped epsilon base with "leading" spacing, DDIM-50 scores below DDIM-8 (``clip_sample.py``): 50 steps start
at t = 981 and 8 at t = 876, and the epsilon sampler's clean-latent estimate blows up near ``alpha_bar = 0``.
``train-base --prediction-type v_prediction --zero-terminal-snr`` trains a base whose schedule reaches
``alpha_bar = 0`` at t = 999 and whose samplers all start there ("trailing" spacing). This script compares step
counts on each inverter given, on the first ``--n`` held-out test images (``TinyWorld("test", size=2000, seed=0)``),
one sample each, seed 0: feature cosine and top-1 agreement with and without the default feature guidance.

Usage (the inverters are folders written by ``train-inverter`` or names of shipped ones):
    .venv/bin/python benchmarks/zero_snr.py tinyworld-cnn/stages.3 runs/zsnr-cnn/inverter [--n 64]
"""
from __future__ import annotations

import argparse

import torch


def main(argv: list[str] | None = None) -> None:
    import workbench as wb
    from workbench.metrics import feature_cosine, topk_agreement

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("inverters", nargs="+", help="shipped inverter names or saved FeatInv folders")
    p.add_argument("--n", type=int, default=64, help="held-out test images")
    p.add_argument("--steps", type=int, nargs="+", default=[5, 8, 20, 50], help="DDIM step counts")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x = wb.TinyWorld("test", size=2000, seed=0).images()[:args.n]
    for name in args.inverters:
        inv = wb.load_inverter(name)
        clf = wb.load_classifier(inv.classifier_name)
        f = wb.extract_features(clf, x, inv.layer)
        sched = inv.base.scheduler_config
        print(f"# {name}: base prediction_type={sched['prediction_type']} spacing={sched['timestep_spacing']} "
              f"zero terminal SNR={bool(sched.get('rescale_betas_zero_snr', False))}", flush=True)
        for fg in (0.0, None):
            for steps in args.steps:
                rec = inv.invert(f, num_inference_steps=steps, feature_guidance_scale=fg, progress=False,
                                 classifier=clf, seed=0)[:, 0]
                cos = feature_cosine(clf, inv.layer, x, rec).mean().item()
                top1 = topk_agreement(clf, x, rec, k=(1,))["top1"].float().mean().item()
                first = int(inv.base.make_scheduler("ddim", steps).timesteps[0])
                print(f"{name} feature guidance={'default' if fg is None else fg} DDIM {steps:>2} (from t={first}): "
                      f"cos {cos:.4f} top1 {top1:.3f}", flush=True)


if __name__ == "__main__":
    main()
