"""Training under two processes, as ``accelerate launch`` runs it on two GPUs: here two CPU processes with gloo.

accelerate starts N processes on CPUs with ``--multi_gpu --num_processes N`` (its ``--cpu --num_processes N``
starts one); ``--device auto`` is the CPU on a machine without a GPU, so every process joins the gloo group.

One launch of this file (``accelerate launch --multi_gpu --num_processes 2 tests/test_distributed.py OUT DATA``)
runs the scenarios below in both processes, each process writing what it saw to ``OUT/process-<rank>.json``; the
tests compare that with one process. A second launch runs the README's command line as a user types it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = str(Path(sys.executable).with_name("accelerate"))
TINY_CNN = ["--arch", '{"depths": [1, 1, 1, 1], "dims": [8, 8, 16, 16]}']
SMALL = ["--train-images", "32", "--no-progress"]
BASE = ["train-base", "--widths", "16,32,32", "--batch-size", "4", "--save-every", "2", *SMALL]
INV_TINY = ["train-inverter", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--batch-size", "2",
            "--save-every", "2", "--eval-images", "0", "--mixed-precision", "no", *SMALL]
INV_FOLDER = ["train-inverter", "--classifier", "tinyworld-vit", "--layer", "blocks.2", "--batch-size", "2",
              "--save-every", "2", "--num-workers", "0", "--mixed-precision", "no", "--no-progress"]
CLASSIFIER = ["train-classifier", "--name", "tinyworld-cnn", "--batch-size", "4", "--test-images", "8", *SMALL,
              *TINY_CNN]
VAE = ["train-vae", "--widths", "16,16", "--batch-size", "4", *SMALL]
DECODER = ["train-decoder", "--classifier", "tinyworld-cnn", "--layer", "stages.3", "--batch-size", "4",
           "--hidden-channels", "16", "--eval-images", "0", "--feature-loss-images", "2", *SMALL]
PER_PROCESS = 4  # the batch of each process in the data scenarios


def image_folder(root: Path, per_class: int = 6) -> Path:
    """A tiny ImageFolder: two classes of random 40x48 PNGs, every image different."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("n01", "n02"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: list[str], *, timeout: int = 400) -> subprocess.CompletedProcess:
    """``accelerate launch`` two CPU processes (gloo) running ``args``."""
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ what each launched process runs
def workbench(argv: list[str]) -> None:
    """``workbench COMMAND ARGS`` in this process: the command's ``main(parse_args(ARGS))``."""
    import importlib

    from workbench.cli import COMMANDS

    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(module.parse_args(argv[1:]))


class Interrupted(Exception):
    """Stands for a kill: raised in both processes at the same step, after a checkpoint."""


def run_interrupted(argv: list[str], *, at_step: int) -> None:
    """``workbench ARGV``, stopped in every process when the loop reaches ``at_step`` (before that step's
    checkpoint), as a kill would stop it."""
    from workbench.training.common import Steps

    log = Steps.log

    def stop(self, **values):
        if self.step == at_step:
            raise Interrupted
        log(self, **values)

    Steps.log = stop
    try:
        workbench(argv)
    except Interrupted:
        pass
    finally:
        Steps.log = log


def shard_scenario(rank: int, world: int, folder: Path) -> dict:
    """The items of this process in the first two steps of a tensor stream, and its first folder batch."""
    from workbench.training.data import ImageFolderStream, TensorStream

    stream = iter(TensorStream(torch.arange(40), batch_size=PER_PROCESS, seed=3, rank=rank, world=world))
    steps = [next(stream)[0].tolist() for _ in range(2)]
    folder_stream = ImageFolderStream(folder, image_size=16, batch_size=PER_PROCESS, seed=3, rank=rank, world=world,
                                      num_workers=0)
    x, y = next(iter(folder_stream))
    return {"tensor_steps": steps, "folder_images": x.tolist(), "folder_labels": y.tolist()}


def classifier_step(out: Path, world_batch: int) -> dict[str, torch.Tensor] | None:
    """One training step of the tiny CNN as train-classifier takes it, in this process's share of a global batch
    of ``world_batch``: the gradients after the backward pass (averaged over the processes by DDP)."""
    import torch.nn.functional as F

    from workbench.training import classifier
    from workbench.training.common import TensorStream, process_of, start_run, tinyworld_images

    config = classifier.parse_args(["--name", "tinyworld-cnn", "--out", str(out), *TINY_CNN])
    config, acc = start_run(config)
    rank, world = process_of(acc)
    clf = classifier.build_classifier(config)
    images, labels = tinyworld_images(32, split="train", seed=0)
    x, y = next(iter(TensorStream(images, labels, batch_size=world_batch // world, seed=0, rank=rank, world=world)))
    clf_p = acc.prepare(clf)
    acc.backward(F.cross_entropy(clf_p(x.float() / 255), y))
    return {k: p.grad.detach().clone() for k, p in acc.unwrap_model(clf_p).named_parameters()}


def budget_scenario(out: Path, rank: int) -> dict:
    """train-base under --max-minutes (3.6 s, measured after 4 steps), with process 1's clock running three times
    faster: alone it would cut the run at another step than process 0."""
    import time

    from workbench.training.common import StepBudget

    StepBudget.probe_steps = 4  # decide after 4 steps, not 30
    if rank == 1:
        StepBudget.clock = staticmethod(lambda: 3 * time.monotonic())
    workbench([*BASE, "--out", str(out), "--steps", "400", "--max-minutes", "0.06", "--save-every", "1000"])
    return json.loads((out / "tinyworld-base" / "card.json").read_text())["training"]["steps"] if rank == 0 else None


def fingerprint_last_step(weights: dict) -> None:
    """Make every training script record, in ``weights[out folder]``, a hash of the modules it checkpoints after its
    last step, in this process (DDP keeps the processes' copies equal only when it sees the forward pass)."""
    from workbench.training import base, classifier, decoder, featinv, vae
    from workbench.training.common import state_fingerprint

    for module in (classifier, vae, base, featinv, decoder):
        def save_if_due(loop, step, acc, config, *, modules, _original=module.save_if_due, **kw):
            _original(loop, step, acc, config, modules=modules, **kw)
            if step + 1 == loop.total:
                weights[Path(config.out).name] = state_fingerprint(*modules.values())
        module.save_if_due = save_if_due


def scenarios(out: Path, folder: Path) -> None:
    """Every scenario, in every process; what each process saw goes to ``out/process-<rank>.json``."""
    import time

    from accelerate import PartialState

    from workbench.training.common import Steps

    state = PartialState(cpu=True)
    rank, world = state.process_index, state.num_processes
    seen, t0 = {"world": world}, time.time()
    seen["shards"] = shard_scenario(rank, world, folder)
    grads = classifier_step(out / "grad", world_batch=2 * PER_PROCESS)
    if rank == 0:
        torch.save(grads, out / "grads.pt")
    ended = []
    Steps_iter = Steps.__iter__

    def record_end(self):
        yield from Steps_iter(self)
        ended.append(self.step)

    Steps.__iter__ = record_end
    seen["weights"] = {}
    fingerprint_last_step(seen["weights"])
    for name, argv in [("base", BASE), ("inv-tiny", INV_TINY),
                       ("inv-folder", [*INV_FOLDER, "--data", str(folder)])]:
        workbench([*argv, "--out", str(out / f"{name}-full"), "--steps", "4"])
        run_interrupted([*argv, "--out", str(out / f"{name}-cut"), "--steps", "4"], at_step=3)
        workbench([*argv, "--out", str(out / f"{name}-cut"), "--steps", "4", "--resume"])
    for name, argv in [("classifier", CLASSIFIER), ("vae", VAE), ("decoder", DECODER)]:
        workbench([*argv, "--out", str(out / name), "--steps", "2"])
    seen["budget_steps"] = budget_scenario(out / "budget", rank)
    seen["ended"] = ended
    seen["seconds"] = round(time.time() - t0, 1)
    (out / f"process-{rank}.json").write_text(json.dumps(seen))


# ------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One two-process launch of :func:`scenarios`: ``(out folder, data folder, per-process records)``."""
    out = tmp_path_factory.mktemp("two-processes")
    folder = image_folder(tmp_path_factory.mktemp("images"))
    res = launch([__file__, str(out), str(folder)])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-6000:]
    seen = [json.loads((out / f"process-{r}.json").read_text()) for r in range(2)]
    return out, folder, seen


def test_two_processes_run(launched):
    _, _, seen = launched
    assert [s["world"] for s in seen] == [2, 2]


def test_each_process_reads_its_own_share_of_the_global_batch(launched):
    """In one step the two processes' items are disjoint and together they are the global batch that one process
    with twice the batch reads (tensor stream, and an ImageFolder with its augmentation)."""
    from workbench.training.data import ImageFolderStream, TensorStream

    _, folder, seen = launched
    one = iter(TensorStream(torch.arange(40), batch_size=2 * PER_PROCESS, seed=3))
    for step in range(2):
        a, b = (seen[r]["shards"]["tensor_steps"][step] for r in range(2))
        assert not set(a) & set(b)
        assert a + b == next(one)[0].tolist()
    x, y = next(iter(ImageFolderStream(folder, image_size=16, batch_size=2 * PER_PROCESS, seed=3, num_workers=0)))
    parts = [torch.tensor(seen[r]["shards"]["folder_images"]) for r in range(2)]
    assert torch.equal(torch.cat(parts), x)  # the same crops and flips as one process draws
    assert [*seen[0]["shards"]["folder_labels"], *seen[1]["shards"]["folder_labels"]] == y.tolist()
    assert not torch.equal(parts[0], parts[1])


def test_two_process_gradient_is_the_one_process_gradient_of_the_union(launched, tmp_path):
    out, _, _ = launched
    two = torch.load(out / "grads.pt", weights_only=True)
    one = classifier_step(tmp_path, world_batch=2 * PER_PROCESS)
    assert two.keys() == one.keys()
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-4, atol=1e-6, msg=k)
    assert any(one[k].abs().sum() > 0 for k in one)


@pytest.mark.parametrize("name,weights", [("base", "tinyworld-base/unet/diffusion_pytorch_model.safetensors"),
                                          ("inv-tiny", "inverter/controlnet/diffusion_pytorch_model.safetensors"),
                                          ("inv-folder", "inverter/controlnet/diffusion_pytorch_model.safetensors")])
def test_a_stopped_two_process_run_resumes_to_the_uninterrupted_weights(launched, name, weights):
    """Each run finishes and writes one set of weights (the main process); a run stopped at step 3 resumes under
    two processes to the same final step and the same weights as the uninterrupted one."""
    from safetensors.torch import load_file

    out, _, seen = launched
    full, cut = out / f"{name}-full", out / f"{name}-cut"
    assert sorted(p.name for p in full.iterdir()) == sorted({"checkpoint", weights.split("/")[0]} |
                                                            ({"cache"} if name == "inv-tiny" else set()))
    for run in (full, cut):
        assert json.loads((run / "checkpoint" / "step.json").read_text())["step"] == 4
        card = json.loads((run / weights.split("/")[0] / "card.json").read_text())
        assert card["training"]["steps"] == 4 and card["training"]["processes"] == 2
    a, b = load_file(str(full / weights)), load_file(str(cut / weights))
    assert all(torch.equal(a[k], b[k]) for k in a), name


def test_every_command_keeps_the_processes_weights_equal(launched):
    """After the last step each process holds the same weights (and EMA): DDP averaged every gradient, also for
    the VAE and the decoder, whose forward passes used to bypass it. Each run wrote one set of weights."""
    out, _, seen = launched
    names = {"base-full", "base-cut", "inv-tiny-full", "inv-tiny-cut", "inv-folder-full", "inv-folder-cut",
             "classifier", "vae", "decoder"}
    assert names <= seen[0]["weights"].keys()
    assert {k: seen[0]["weights"][k] for k in names} == {k: seen[1]["weights"][k] for k in names}
    assert (out / "classifier" / "tinyworld-cnn.safetensors").is_file()
    assert (out / "vae" / "vae" / "card.json").is_file() and (out / "decoder" / "inverter" / "card.json").is_file()


def test_every_process_ends_every_run_at_the_same_step(launched):
    """Both processes end each run together, also under --max-minutes when their clocks disagree (the main
    process decides and broadcasts)."""
    _, _, seen = launched
    assert seen[0]["ended"] == seen[1]["ended"]
    assert seen[0]["ended"][:9] == [4] * 6 + [2] * 3  # the full and resumed runs (a stopped one does not end)
    budget = seen[0]["budget_steps"]
    assert 5 <= budget < 400 and seen[0]["ended"][-1] == seen[1]["ended"][-1] == budget


def test_the_readme_command_runs_two_processes(tmp_path):
    """The multi-GPU command as the README gives it, on an ImageFolder with two CPU processes."""
    folder = image_folder(tmp_path / "images")
    res = launch(["-m", "workbench.cli", *INV_FOLDER, "--data", str(folder), "--steps", "3",
                  "--out", str(tmp_path / "run")])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for r in range(2):
        assert f"process {r} of 2 ended at step 3" in res.stdout
    assert res.stdout.count("pooling=none") == 1  # one summary line: the main process's
    card = json.loads((tmp_path / "run" / "inverter" / "card.json").read_text())
    assert card["training"]["processes"] == 2 and card["training"]["augment"] is True


if __name__ == "__main__":  # a launched process: python tests/test_distributed.py OUT DATA
    scenarios(Path(sys.argv[1]), Path(sys.argv[2]))
