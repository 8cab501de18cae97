"""The judges that no method touches: independent classifiers and the factor reader.

Contracts: the judges and the reader load by name; their accuracy on real test images is what their cards say and at
least a floor; the harness grades with them; an inverter that returns the original scores at the ceiling, and one
that returns other images does not; own-model metrics say whether the method used the graded model's gradients.
"""
from __future__ import annotations

import math

import pytest
import torch

import workbench as wb
from workbench.evaluation import evaluate, evaluate_reconstructions, method_name, summary, uses_model_gradients
from workbench.factor_reader import (CLASS_FACTORS, READ_FACTORS, ROTATION_ORDER, FactorReader, factor_errors,
                                     load_factor_reader, reader_loss, spread)
from workbench.inverters.retrieval import RetrievalInverter
from workbench.judges import DEFAULT_JUDGES, judge_columns, kid, load_judges
from workbench.zoo import JUDGE_CLASSIFIERS, SHIPPED_CLASSIFIERS

#: Floors asserted on the shipped judges' and reader's real-image accuracy (their cards hold the measured values).
JUDGE_ACCURACY_FLOOR = 0.85
#: background: the reader tells flat / gradient / noise / stripes apart at 0.66 on 2,000 test images (its card), well
#: above chance (0.25) but the weakest read: low-contrast backgrounds hide their family (docs/judges.md)
READER_CLASS_FLOOR = {"shape": 0.95, "background": 0.55, "distractor": 0.95}
READER_ERROR_CEILING = 0.35  # continuous factors: mean error below a third of the factor's spread


@pytest.fixture(scope="module")
def test_set():
    ds = wb.TinyWorld("test", size=256, seed=0)
    return ds, ds.images(), ds.labels()


# ---------------------------------------------------------------- the shipped judges and reader
@pytest.mark.parametrize("name", DEFAULT_JUDGES)
def test_judge_loads_by_name_and_is_accurate(name, test_set):
    ds, x, y = test_set
    judge = wb.load_classifier(name)
    assert judge.name == name and not judge.training
    acc = (judge(x).argmax(1) == y).float().mean().item()
    assert acc >= JUDGE_ACCURACY_FLOOR, f"{name}: accuracy {acc:.3f} on 256 real test images"
    card = wb.weights.read_card(name)
    assert card["training"]["augment"] is True and card["training"]["seed"] == JUDGE_CLASSIFIERS[name]["seed"]
    assert card["metrics"]["test_accuracy"] >= JUDGE_ACCURACY_FLOOR


def test_judges_never_share_a_name_or_seed_with_the_inverted_classifiers():
    assert not set(JUDGE_CLASSIFIERS) & set(SHIPPED_CLASSIFIERS)
    assert all(spec["seed"] != 0 for spec in JUDGE_CLASSIFIERS.values())
    families = {spec["architecture"] for spec in JUDGE_CLASSIFIERS.values()}
    assert {"resnet", "vit"} <= families  # a CNN family and a transformer: neither is the inverted ConvNeXt


def test_factor_reader_reads_real_images_near_its_card(test_set):
    ds, x, _ = test_set
    reader = load_factor_reader()
    errors = factor_errors(reader.read(x), ds.factors)
    for name in CLASS_FACTORS:
        assert errors[name].mean() >= READER_CLASS_FLOOR[name], (name, errors[name].mean())
    for name in READ_FACTORS:
        if name not in CLASS_FACTORS:
            assert errors[name].nanmean() <= READER_ERROR_CEILING, (name, errors[name].nanmean())
    assert set(reader.card["ceiling"]) == set(READ_FACTORS)
    for name in CLASS_FACTORS:  # the card's ceiling (2,000 images) agrees with these 256
        assert abs(errors[name].mean() - reader.card["ceiling"][name]) < 0.08


def test_judges_and_reader_are_invariant_to_what_they_should_be(test_set):
    """The judges were trained to ignore tint: a hue rotation keeps most classes; the reader sees it move."""
    import kornia

    ds, x, y = test_set
    rotated = kornia.enhance.adjust_hue(x, math.pi / 2).clamp(0, 1)
    for judge in load_judges().values():
        assert (judge(rotated).argmax(1) == y).float().mean() >= JUDGE_ACCURACY_FLOOR - 0.1
    reader = load_factor_reader()
    moved = factor_errors(reader.read(rotated), ds.factors)["hue"].mean()
    assert moved > 0.6  # a quarter turn of hue is 0.25 / (1 / sqrt(12)) = 0.87 spreads away


# ---------------------------------------------------------------- the harness
def test_the_original_scores_at_the_ceiling_and_other_images_do_not(test_set):
    ds, x, _ = test_set
    x, factors = x[:48], {k: v[:48] for k, v in ds.factors.items()}
    cnn = wb.load_classifier("tinyworld-cnn")
    ceiling = factor_errors(load_factor_reader().read(x), factors)
    t = evaluate_reconstructions(cnn, "stages.3", x, x, factors=factors)
    s = summary(t)
    for name in DEFAULT_JUDGES:
        assert s[f"judge_agree[{name}]"] == 1.0 and s[f"judge_cosine[{name}]"] == pytest.approx(1.0, abs=1e-5)
    for name, err in ceiling.items():
        assert s[f"factor[{name}]"] == pytest.approx(float(err.nanmean()), abs=1e-6)
    shuffled = x.roll(1, dims=0)  # every image answered by its neighbour: judges and reader must see it
    s2 = summary(evaluate_reconstructions(cnn, "stages.3", x, shuffled, factors=factors))
    assert max(s2[f"judge_agree[{n}]"] for n in DEFAULT_JUDGES) < 0.6
    assert s2["factor[x]"] > 3 * s["factor[x]"] and s2["factor[shape]"] < s["factor[shape]"] - 0.3
    assert s2["kid"] > s["kid"] - 1e-3  # neighbours are real images too: the KID may stay low, never much lower


def test_summary_gives_every_column_an_interval(test_set):
    ds, x, _ = test_set
    cnn = wb.load_classifier("tinyworld-cnn")
    noisy = (x[:32] + 0.1 * torch.randn_like(x[:32])).clamp(0, 1)
    s = summary(evaluate_reconstructions(cnn, "stages.3", x[:32], noisy,
                                         factors={k: v[:32] for k, v in ds.factors.items()}))
    for col in [c for c in s.index if c.startswith(("judge_", "factor[", "feature_cosine", "top1"))]:
        if col.endswith(("_lo", "_hi")):
            continue
        assert s[f"{col}_lo"] <= s[col] <= s[f"{col}_hi"], col
    assert s["kid_lo"] <= s["kid"] <= s["kid_hi"]


def test_retrieval_finds_the_image_itself_and_is_graded():
    ds = wb.TinyWorld("train", size=300, seed=0)
    cnn = wb.load_classifier("tinyworld-cnn")
    ret = RetrievalInverter.from_dataset(cnn, "stages.3", ds)
    feats = wb.hooks.extract_features(cnn, ds.images([5, 77]), "stages.3")
    out = ret.invert(feats, num_samples=3)
    assert out.shape == (2, 3, 3, 32, 32) and out[:, 0].equal(ds.images([5, 77]))
    assert not out[:, 1].equal(out[:, 0])
    t = evaluate(ret, cnn, "stages.3", wb.TinyWorld("test", size=64), num_images=16, progress=False)
    assert t.attrs["method"] == "nearest training image" and t.attrs["uses_model_gradients"] is False
    assert 0 < t.summary()["judge_agree[tinyworld-judge-resnet]"] <= 1


def test_method_names_and_gradient_flags():
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    assert method_name(inv, {"feature_guidance_scale": 0.0}) == "FeatInv"
    assert uses_model_gradients(inv, {"feature_guidance_scale": 0.02})
    assert method_name(inv, {"feature_guidance_scale": 0.02}) == (
        "FeatInv + feature guidance (uses the model's gradients)")
    assert not uses_model_gradients(wb.load_inverter("tinyworld-cnn/stages.3-decoder"))


# ---------------------------------------------------------------- the parts, on random weights
def test_reader_loss_learns_on_a_batch():
    torch.manual_seed(0)
    ds = wb.TinyWorld("train", size=64, seed=3)
    reader = FactorReader({"channels": [8, 16, 16, 16], "stem_width": 8})
    opt = torch.optim.AdamW(reader.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = reader_loss(reader, reader(ds.images()), ds.factors)
        opt.zero_grad(), loss.backward(), opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_factor_errors_units():
    f = wb.TinyWorld("test", size=8, seed=0).factors
    perfect = {k: f[k].clone() for k in READ_FACTORS}
    perfect["rotation"] = f["rotation"][:, None].repeat(1, 8)
    e = factor_errors(perfect, f)
    assert all(float(e[n].mean()) == 1.0 for n in CLASS_FACTORS)
    assert all(float(e[n].nan_to_num(0).abs().max()) < 1e-5 for n in READ_FACTORS if n not in CLASS_FACTORS)
    off = dict(perfect, hue=(f["hue"] + 0.5) % 1.0)  # half a turn: the largest circular error
    assert torch.allclose(factor_errors(off, f)["hue"], torch.full((8,), 0.5 / spread("hue")))
    sym = dict(perfect, rotation=perfect["rotation"] + torch.tensor(
        [2 * math.pi / max(o, 1) for o in ROTATION_ORDER]))  # one symmetry turn: no error
    assert float(factor_errors(sym, f)["rotation"].nan_to_num(0).abs().max()) < 1e-4


def test_judge_columns_mark_nonfinite_rows():
    torch.manual_seed(0)
    judges = {"tinyworld-judge-resnet": wb.models.create_classifier("tinyworld-judge-resnet").eval()}
    x = torch.rand(4, 3, 32, 32)
    rec = x.clone()
    rec[1] = float("nan")
    cols = judge_columns(judges, x, rec)
    agree = cols["judge_agree[tinyworld-judge-resnet]"]
    assert torch.isnan(agree[1]) and agree[[0, 2, 3]].eq(1).all()


def test_kid_is_near_zero_for_the_same_distribution_and_has_an_interval():
    g = torch.Generator().manual_seed(0)
    real, same, other = (torch.randn(400, 16, generator=g), torch.randn(200, 16, generator=g),
                         torch.randn(200, 16, generator=g) + 1.0)
    k_same, lo, hi = kid(real, same, num_subsets=50)
    k_other = kid(real, other, num_subsets=50)[0]
    assert lo <= k_same <= hi and abs(k_same) < 0.1 * k_other


# ---------------------------------------------------------------- the studies read with the judges
class _AlwaysStar(wb.Classifier):
    """The edited classifier with its head replaced by one that always says "star": the same network and maps,
    other logits."""

    def __init__(self, clf):
        super().__init__(clf.model, clf.mean.flatten().tolist(), clf.std.flatten().tolist(), clf.input_size,
                         name=clf.name)

    def forward(self, x):
        logits = super().forward(x)
        return torch.full_like(logits, -10.0).index_fill(1, torch.tensor([3]), 10.0)


def test_steering_reports_the_judges_reading_not_the_edited_model():
    from workbench.analysis.concepts import mean_difference
    from workbench.analysis.steering_studies import steering_study

    cnn = wb.load_classifier("tinyworld-cnn")
    inv = wb.load_inverter("tinyworld-cnn/stages.3")
    ds = wb.TinyWorld("test", size=64)
    x, y = ds.images(), ds.labels()
    feats = wb.hooks.extract_features(cnn, x, "stages.3")
    star = mean_difference(feats, y == 3, layer="stages.3", classifier_name="tinyworld-cnn")
    runs = {}
    for name, clf in {"real": cnn, "always star": _AlwaysStar(cnn)}.items():
        runs[name] = steering_study(clf, inv, x[:3], star, [0, 2], target_class=3, progress=False)[0]
    real, fake = runs["real"], runs["always star"]
    assert (fake.p_target > 0.99).all() and not (real.p_target > 0.99).all()  # the edited model's own reading moved
    assert real.judge_p_target.tolist() == pytest.approx(fake.judge_p_target.tolist(), abs=1e-6)
    assert {"read_x", "read_size", "read_shape", "judge_predicted"} <= set(real.columns)
