"""Every real-scale preset states the map shape its classifier gives at the size it reads: each classifier is built
with random weights (timm, ``pretrained=False``, offline) at its own input size and its layer table is checked."""
from __future__ import annotations

import pytest
import timm
import torch

import workbench as wb
from workbench.presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_feature_shape_is_what_its_classifier_gives(name):
    preset = PRESETS[name]
    torch.manual_seed(0)
    model = timm.create_model(preset.classifier, pretrained=False).eval()
    size = preset.classifier_size or model.pretrained_cfg["input_size"][-1]
    table = wb.layer_table(model, (3, size, size), spatial=True)
    row = table[table["name"] == preset.layer]
    assert len(row) == 1, f"{name}: no spatial layer {preset.layer!r}"
    assert tuple(row["shape"].iloc[0]) == tuple(preset.feature_shape), (
        f"{name}: {preset.classifier} at {size} px gives {row['shape'].iloc[0]} at {preset.layer}, the preset says "
        f"{preset.feature_shape}")


def test_layer_table_spatial_keeps_only_maps():
    model = timm.create_model("resnet18", pretrained=False, num_classes=4)
    full, spatial = wb.layer_table(model, (3, 64, 64)), wb.layer_table(model, (3, 64, 64), spatial=True)
    assert len(spatial) < len(full) and spatial["stride"].notna().all()
    assert "fc" in set(full["name"]) and "fc" not in set(spatial["name"]) and "layer4" in set(spatial["name"])
