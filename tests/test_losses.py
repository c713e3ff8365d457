"""hf_seg's losses against mmsegmentation 1.x's (values and gradients, ignore index included), the loss specs, and
the per-head losses the Trainer computes from the heads' logits."""

import warnings

import numpy as np

import pytest
import torch
from torch.nn import functional as F

from hf_seg.training import losses
from hf_seg.training.losses import LossSpecError, parse_head_losses, parse_loss_spec

from mmseg_reference import import_mmseg
from tiny_models import tiny_mpvit, tiny_segformer, tiny_setr


IGNORE = 255
CLASS_WEIGHT = [1.0, 2.0, 0.5, 3.0, 0.25]
ALPHA = [0.1, 0.2, 0.3, 0.4, 0.6]


@pytest.fixture(scope="module")
def mmseg_losses():
    import_mmseg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from mmseg.models import losses as mmseg_losses
        from mmseg.models.losses.focal_loss import py_sigmoid_focal_loss
        from mmseg.structures.sampler import OHEMPixelSampler
    mmseg_losses.py_sigmoid_focal_loss = py_sigmoid_focal_loss
    mmseg_losses.OHEMPixelSampler = OHEMPixelSampler
    return mmseg_losses


def _inputs(num_classes=5, ignored=True, seed=0):
    """Logits (2, C, 6, 7) and labels with ignored pixels, and a class absent from the second image."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, num_classes, 6, 7, generator=generator)
    labels = torch.randint(0, max(num_classes, 2), (2, 6, 7), generator=generator)
    if num_classes > 2:
        labels[1][labels[1] == num_classes - 1] = 0
    if ignored:
        labels[0, :2] = IGNORE
        labels[1, :, 0] = IGNORE
    return logits, labels


def _mmseg_ohem(mmseg, thresh, min_kept, **ce_options):
    class Head:  # the sampler's context: a decode head's ignore index and loss
        ignore_index = IGNORE
        loss_decode = mmseg.CrossEntropyLoss(**ce_options)

    def loss(logits, labels):
        weights = mmseg.OHEMPixelSampler(Head, thresh=thresh, min_kept=min_kept).sample(logits, labels[:, None])
        return Head.loss_decode(logits, labels, weight=weights, ignore_index=IGNORE)

    return loss


def _mmseg_focal(mmseg, gamma=2.0, alpha=0.5, class_weight=None):
    """mmseg's pure-PyTorch sigmoid focal loss on the one-hot targets its CUDA path builds (FocalLoss.forward's CPU
    branch selects the wrong one-hot column, and the CUDA op is not available here)."""

    def loss(logits, labels):
        num_classes = logits.shape[1]
        flat = labels.reshape(-1)
        valid = (flat != IGNORE).view(-1, 1)
        flat = flat.masked_fill(flat == IGNORE, 0)
        target = (flat == 1).long().view(-1, 1) if num_classes == 1 else F.one_hot(flat, num_classes)
        pred = logits.permute(0, 2, 3, 1).reshape(-1, num_classes)
        return mmseg.py_sigmoid_focal_loss(pred, target, None, None, gamma=gamma, alpha=alpha,
                                           class_weight=class_weight, valid_mask=valid)

    return loss


def _parity_cases(mmseg):
    """(name, hf_seg spec, mmseg loss(logits, labels), num_classes, with ignored pixels)."""
    ce = mmseg.CrossEntropyLoss
    lovasz = mmseg.LovaszLoss

    def call(module):
        return lambda logits, labels: module(logits, labels, ignore_index=IGNORE)

    return [
        ("ce", "ce", call(ce()), 5, True),
        ("ce avg_non_ignore", "ce(avg_non_ignore=true)", call(ce(avg_non_ignore=True)), 5, True),
        # mmseg 1.x indexes the class weights with the labels, ignore index included: no ignored pixels there
        ("ce class_weight", f"ce(class_weight={CLASS_WEIGHT})", call(ce(class_weight=CLASS_WEIGHT)), 5, False),
        ("ce class_weight avg_non_ignore", f"ce(class_weight={CLASS_WEIGHT},avg_non_ignore=true)",
         call(ce(class_weight=CLASS_WEIGHT, avg_non_ignore=True)), 5, False),
        ("ohem thresh=0.7 min_kept=10", "ohem(thresh=0.7,min_kept=10)", _mmseg_ohem(mmseg, 0.7, 10), 5, True),
        ("ohem thresh=0.3 min_kept=5", "ohem(thresh=0.3,min_kept=5)", _mmseg_ohem(mmseg, 0.3, 5), 5, True),
        ("ohem top-k min_kept=10", "ohem(min_kept=10)", _mmseg_ohem(mmseg, None, 10), 5, True),
        ("ohem min_kept > pixels", "ohem(thresh=0.5,min_kept=1000)", _mmseg_ohem(mmseg, 0.5, 1000), 5, True),
        ("ohem top-k class_weight", f"ohem(min_kept=7,class_weight={CLASS_WEIGHT})",
         _mmseg_ohem(mmseg, None, 7, class_weight=CLASS_WEIGHT), 5, False),
        ("dice", "dice", call(mmseg.DiceLoss()), 5, True),
        ("dice softmax", "dice(use_sigmoid=false)", call(mmseg.DiceLoss(use_sigmoid=False)), 5, True),
        ("dice naive", "dice(naive_dice=true,eps=0.01)", call(mmseg.DiceLoss(naive_dice=True, eps=0.01)), 5, True),
        ("lovasz", "lovasz", call(lovasz(reduction="none")), 5, True),
        ("lovasz per_image", "lovasz(per_image=true)", call(lovasz(per_image=True)), 5, True),
        ("lovasz all", "lovasz(classes=all)", call(lovasz(classes="all", reduction="none")), 5, True),
        ("lovasz classes list", "lovasz(per_image=true,classes=[0,2,4])",
         call(lovasz(per_image=True, classes=[0, 2, 4])), 5, True),
        ("lovasz class_weight", f"lovasz(class_weight={CLASS_WEIGHT})",
         call(lovasz(class_weight=CLASS_WEIGHT, reduction="none")), 5, True),
        ("focal", "focal", _mmseg_focal(mmseg), 5, True),
        ("focal gamma alpha list class_weight", f"focal(gamma=1.5,alpha={ALPHA},class_weight={CLASS_WEIGHT})",
         _mmseg_focal(mmseg, 1.5, ALPHA, CLASS_WEIGHT), 5, True),
        ("bce one-hot", "bce", call(ce(use_sigmoid=True)), 5, True),
        ("bce one-hot avg_non_ignore", "bce(avg_non_ignore=true)", call(ce(use_sigmoid=True, avg_non_ignore=True)),
         5, True),
        # one output channel (num_labels=1): foreground = label 1
        ("binary bce", "bce", call(ce(use_sigmoid=True)), 1, True),
        ("binary bce pos_weight", "bce(pos_weight=2.0)", call(ce(use_sigmoid=True, class_weight=[2.0])), 1, True),
        ("binary dice", "dice",
         lambda logits, labels: mmseg.DiceLoss()(logits, ((labels == 1) & (labels != IGNORE)).float()[:, None]), 1,
         True),
        ("binary lovasz hinge", "lovasz",
         lambda logits, labels: lovasz(loss_type="binary", reduction="none")(logits[:, 0], labels, ignore_index=IGNORE),
         1, True),
        ("binary lovasz hinge per_image", "lovasz(per_image=true)",
         lambda logits, labels: lovasz(loss_type="binary", per_image=True)(logits[:, 0], labels, ignore_index=IGNORE),
         1, True),
        ("binary focal", "focal(alpha=0.25)", _mmseg_focal(mmseg, alpha=0.25), 1, True),
    ]


def test_each_loss_equals_mmsegmentation(mmseg_losses, subtests):
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mmseg's CrossEntropyLoss warns about its avg_non_ignore default
        cases = _parity_cases(mmseg_losses)
    for name, spec, reference, num_classes, ignored in cases:
        with subtests.test(name):
            logits, labels = _inputs(num_classes, ignored)
            ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
            value = parse_loss_spec(spec)(ours, labels, IGNORE)
            expected = reference(theirs, labels)
            value.backward()
            expected.backward()
            value_diff = (value - expected).abs().item()
            grad_diff = (ours.grad - theirs.grad).abs().max().item()
            rows.append(f"{name:40s} {value_diff:.1e} {grad_diff:.1e}")
            assert value_diff <= 1e-6 * max(1.0, expected.abs().item())
            assert grad_diff <= 1e-7
            if ignored:  # ignored pixels get no gradient (the Dice's probabilities there count, as in mmseg)
                mask = (labels == IGNORE).unsqueeze(1).expand_as(ours.grad)
                if not spec.startswith(("dice", "binary dice")):
                    assert ours.grad[mask].abs().max() == 0
    print("\nloss | max |dvalue| | max |dgrad|\n" + "\n".join(rows))


def test_dice_with_ignored_pixels_masked_is_mmsegs_dice_without_those_pixels(mmseg_losses):
    logits, labels = _inputs(ignored=False)
    labels[:, :, -2:] = IGNORE  # the last two columns: cropped away for mmseg
    for options in ({}, {"use_sigmoid": False, "naive_dice": True}):
        value = losses.dice_loss(logits, labels, mask_ignored=True, **options)
        expected = mmseg_losses.DiceLoss(**options)(logits[..., :-2], labels[..., :-2])
        torch.testing.assert_close(value, expected)


def test_default_ce_is_the_models_own_loss():
    """`ce` is bit-identical to SETR's / MPViT's `segmentation_loss` (mean over all pixels, ignored ones 0)."""
    logits, labels = _inputs()
    expected = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none").mean()
    assert torch.equal(losses.cross_entropy(logits, labels), expected)


def test_class_weights_and_label_smoothing_with_ignored_pixels():
    logits, labels = _inputs()
    weight = torch.tensor(CLASS_WEIGHT)
    # avg_non_ignore: PyTorch's weighted mean, label smoothing included
    expected = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE, label_smoothing=0.1)
    value = losses.cross_entropy(logits, labels, class_weight=CLASS_WEIGHT, label_smoothing=0.1, avg_non_ignore=True)
    torch.testing.assert_close(value, expected)
    # all pixels: an ignored pixel is one pixel of weight 1 and loss 0
    per_pixel = F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE, reduction="none")
    valid = labels != IGNORE
    denominator = weight[labels[valid]].sum() + (~valid).sum()
    torch.testing.assert_close(losses.cross_entropy(logits, labels, class_weight=CLASS_WEIGHT),
                               per_pixel.sum() / denominator)


def test_losses_on_only_ignored_pixels_are_zero_with_zero_gradients(subtests):
    for spec, num_classes in [("ce", 5), ("ce(avg_non_ignore=true)", 5), ("ohem(thresh=0.7)", 5), ("ohem", 5),
                              ("lovasz", 5), ("lovasz(per_image=true)", 5), ("focal", 5), ("bce", 1),
                              ("bce(avg_non_ignore=true)", 1), ("lovasz", 1)]:
        with subtests.test(spec):
            logits = torch.randn(2, num_classes, 4, 4, requires_grad=True)
            labels = torch.full((2, 4, 4), IGNORE)
            value = parse_loss_spec(spec)(logits, labels, IGNORE)
            value.backward()
            assert value.item() == 0 and logits.grad.abs().max() == 0


def test_specs_parse_to_one_canonical_form():
    spec = parse_loss_spec(" CE : 1 + dice( use_sigmoid = False ):3+ohem(thresh=0.7, min_kept=100000)")
    assert str(spec) == "ce:1.0+dice(use_sigmoid=false):3.0+ohem(min_kept=100000,thresh=0.7):1.0"
    assert parse_loss_spec(str(spec)) == spec
    assert str(parse_loss_spec("lovasz(classes=[0,2],per_image=true):0.5")) == \
        "lovasz(classes=[0,2],per_image=true):0.5"
    heads = parse_head_losses("decode=ce+dice:3;aux=ce:0.4;aux1=focal(gamma=1)")
    assert str(heads) == "decode=ce:1.0+dice:3.0;aux=ce:0.4;aux1=focal(gamma=1.0):1.0"
    assert parse_head_losses(str(heads)) == heads
    assert str(parse_head_losses("ce")) == "ce:1.0" and str(parse_head_losses("decode=ce;aux=none")) == \
        "decode=ce:1.0;aux=none"


def test_bad_specs_name_the_bad_part(subtests):
    cases = {
        "ce+dcie": "unknown loss 'dcie' (did you mean 'dice'?)",
        "ce:abc": "the weight after ':' must be a number",
        "ce:-1": "finite number >= 0",
        "ce++dice": "empty term",
        "ohem(thresh=1.5)": "thresh must be <= 1",
        "ohem(min_kept=0.5)": "min_kept must be an integer",
        "ohem(tresh=0.7)": "no option 'tresh' (did you mean 'thresh'?)",
        "dice(use_sigmoid=yes)": "use_sigmoid must be true or false",
        "ce(class_weight=[1,2)": "unbalanced",
        "ce(label_smoothing)": "is not key=value",
        "ce(label_smoothing=0.1,label_smoothing=0.2)": "given twice",
        "lovasz(classes=some)": "classes must be present, all or a list",
        "focal(alpha=[0.5,2])": "alpha must be <= 1",
        "ce;aux=dice": "every part is HEAD=SPEC",
        "aux=dice": "name the decode head's loss too",
        "decode=ce;decode=dice": "decode given twice",
        "": "non-empty string",
    }
    for spec, message in cases.items():
        with subtests.test(spec):
            with pytest.raises(LossSpecError, match=None) as raised:
                parse_head_losses(spec)
            assert message in str(raised.value), str(raised.value)


def test_specs_are_checked_against_the_model():
    setr = tiny_setr("pup")  # two auxiliary heads
    with pytest.raises(ValueError, match=r"aux2 does not exist; SetrForSemanticSegmentation has 2 auxiliary"):
        parse_head_losses("decode=ce;aux2=dice").head_specs(setr)
    with pytest.raises(ValueError, match="names auxiliary heads, but SegformerForSemanticSegmentation has none"):
        parse_head_losses("decode=ce;aux=dice").head_specs(tiny_segformer())
    with pytest.raises(ValueError, match="class_weight has 3 values but the model has 5 classes"):
        parse_head_losses("ce(class_weight=[1,2,3])").head_specs(setr)


def _captured_loss(model, spec, pixel_values, labels):
    with parse_head_losses(spec).capture(model) as captured:
        outputs = model(pixel_values=pixel_values, labels=labels)
    return captured.loss(labels, model.config.semantic_loss_ignore_index), outputs


@pytest.mark.parametrize("family", ["setr", "mpvit", "segformer"])
def test_head_losses_from_hooks_equal_the_models_own_loss(family):
    """The Trainer's per-head losses, from the heads' logits, are the model's own loss for the matching spec: SETR's
    decode + 0.4 x each auxiliary head, MPViT's UperNet + FCN head, transformers' Segformer's mean over labelled
    pixels; a spec with other terms adds exactly them."""
    model = {"setr": lambda: tiny_setr("pup"), "mpvit": tiny_mpvit, "segformer": tiny_segformer}[family]().train()
    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 5, (2, 32, 32))
    labels[:, :4] = IGNORE
    same = "ce(avg_non_ignore=true)" if family == "segformer" else "ce"
    torch.manual_seed(2)  # dropout
    loss, outputs = _captured_loss(model, same, pixel_values, labels)
    torch.testing.assert_close(loss, outputs.loss, rtol=1e-6, atol=1e-7)

    model.eval()
    heads = losses.segmentation_heads(model)
    assert len(heads) == {"setr": 3, "mpvit": 2, "segformer": 1}[family]
    with parse_head_losses("ce+dice:3").capture(model) as captured:
        model(pixel_values=pixel_values, labels=labels)
    logits = [F.interpolate(captured.outputs[name][0], size=(32, 32), mode="bilinear") for name, _ in heads]
    expected = sum(
        weight * (losses.cross_entropy(head, labels) + 3 * losses.dice_loss(head, labels))
        for weight, head in zip([1.0] + [0.4] * (len(heads) - 1), logits)
    )
    torch.testing.assert_close(captured.loss(labels), expected)
    if family == "setr":  # per-head specs with their own weights; aux=none drops the auxiliary losses
        with parse_head_losses("decode=lovasz;aux0=focal:2;aux1=none").capture(model) as captured:
            model(pixel_values=pixel_values, labels=labels)
        expected = losses.lovasz_loss(logits[0], labels) + 2 * losses.focal_loss(logits[1], labels)
        value = captured.loss(labels)
        torch.testing.assert_close(value, expected)
        value.backward()  # a head without a loss still gets (zero) gradients: DDP needs every parameter used
        assert all(p.grad is not None and not p.grad.any() for p in model.auxiliary_heads[1].parameters())


def test_trainer_uses_the_configured_loss(tmp_path):
    from transformers import TrainingArguments

    from hf_seg.training.trainer import SegmentationTrainer

    model = tiny_setr("naive").train()
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    pixel_values, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    trainer = SegmentationTrainer(model=model, args=args, loss="ce")
    torch.manual_seed(0)
    configured = trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": labels})
    torch.manual_seed(0)
    own = SegmentationTrainer(model=model, args=args).compute_loss(model, {"pixel_values": pixel_values,
                                                                          "labels": labels})
    torch.testing.assert_close(configured, own)
    bad = labels.index_fill(1, torch.tensor([0]), 7)
    with pytest.raises(ValueError, match=r"labels hold values \[7\] outside \[0, 5\)"):
        trainer.compute_loss(model, {"pixel_values": pixel_values, "labels": bad})


def test_train_with_a_loss_spec_saves_it_with_the_model(tmp_path, capsys):
    """`hf-seg train --loss`: the spec trains (decode + auxiliary heads), and recipe.json and the card carry it."""
    import json

    import hf_seg
    from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
    from hf_seg.training import train_main

    data = tmp_path / "data"
    make_quickstart_dataset(num_train=4, num_validation=1, size=32, seed=1).save_to_disk(str(data))
    out = tmp_path / "run"
    tiny = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32,
                patch_size=8, decoder_channels=8, auxiliary_in_indices=[0])
    argv = ["--model", "setr-pup-vit-large-ade20k-512", "--dataset", str(data), "--output_dir", str(out),
            "--config_overrides", json.dumps(tiny), "--crop_size", "32", "--train_scale", "128", "32",
            "--max_steps", "2", "--per_device_train_batch_size", "2", "--save_strategy", "no", "--use_cpu",
            "--reduce_labels", "false", "--eval_split", "none", "--loss", "ce + dice:3 + lovasz(per_image=true):0.5"]
    assert train_main(argv) == 0
    spec = "ce:1.0+dice:3.0+lovasz(per_image=true):0.5"
    assert json.loads((out / "recipe.json").read_text())["loss"] == spec
    assert f"- loss: {spec}" in (out / "README.md").read_text()
    assert f"loss: {spec} (auxiliary heads" in capsys.readouterr().err
    assert len(QUICKSTART_LABELS) == hf_seg.SetrConfig.from_pretrained(out).num_labels

    assert train_main(argv[:-1] + ["ce+dcie:3"]) == 2
    assert "--loss: loss spec 'ce+dcie:3': 'dcie:3': unknown loss 'dcie' (did you mean 'dice'?)" in \
        capsys.readouterr().err
    assert train_main(argv[:-1] + ["ce", "--class_weights", "inverse"]) == 2
    assert "--class_weights must be one of inverse_frequency, median_frequency, got 'inverse'" in \
        capsys.readouterr().err

    # binary masks (0 / 1): one class named -> one output channel, trained with bce + dice, scored as two classes
    from datasets import Dataset, DatasetDict, load_from_disk
    from PIL import Image

    def binary(rows):
        return Dataset.from_dict({"image": [row["image"] for row in rows], "label": [
            Image.fromarray((np.asarray(row["label"]) > 0).astype(np.uint8)) for row in rows]})

    shapes = load_from_disk(str(data))
    binary_data = DatasetDict(train=binary(shapes["train"]), validation=binary(shapes["validation"]))
    binary_data.save_to_disk(str(tmp_path / "b"))
    (tmp_path / "names.json").write_text('["shape"]')
    argv[argv.index("--dataset") + 1] = str(tmp_path / "b")
    argv[argv.index("--eval_split") + 1] = "validation"
    assert train_main(argv[:-1] + ["bce+dice:3", "--id2label", str(tmp_path / "names.json"), "--eval_mode", "whole",
                                   "--output_dir", str(tmp_path / "binary")]) == 0
    assert "1 class (shape): binary masks, label 1 = shape and 0 = background" in capsys.readouterr().err
    results = json.loads((tmp_path / "binary" / "all_results.json").read_text())
    assert hf_seg.SetrConfig.from_pretrained(tmp_path / "binary").num_labels == 1
    assert {"eval_iou_background", "eval_iou_shape"} <= set(results)


def _binary_models():
    """Every family with one output channel (num_labels=1: binary foreground masks)."""
    import hf_seg
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from tiny_models import TINY_SETR

    binary = dict(num_labels=1, id2label={0: "foreground"}, label2id={"foreground": 0})
    torch.manual_seed(0)
    setr = hf_seg.create_model("setr-pup-vit-large-ade20k-512", **{**TINY_SETR, **binary}, auxiliary_in_indices=[1, 2])
    mpvit = hf_seg.MPViTForSemanticSegmentation(hf_seg.MPViTConfig(
        hidden_sizes=[16, 16, 24, 32], depths=[1, 1, 1, 1], num_paths=[1, 1, 1, 1], mlp_ratios=[2, 2, 2, 2],
        decoder_hidden_size=16, auxiliary_channels=8, out_features=["stage1", "stage2", "stage3", "stage4"], **binary))
    encoder = dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 2, 2],
                   decoder_hidden_size=16, **binary)
    segformer = SegformerForSemanticSegmentation(SegformerConfig(**encoder))
    mmseg_segformer = hf_seg.SegformerMmsegForSemanticSegmentation(hf_seg.SegformerMmsegConfig(**encoder))
    return {"setr": setr, "mpvit": mpvit, "segformer": segformer, "segformer-mmseg": mmseg_segformer}


def test_one_output_channel_trains_and_predicts_for_every_family(subtests):
    """num_labels=1: each model's own loss is transformers' Segformer BCE (decode + 0.4 x auxiliary heads), equal to
    the `bce` spec from the heads' logits; `bce+dice` and `lovasz` train; labels other than 0 / 1 are refused;
    segment() and the evaluation read the logit as background 0 / foreground 1 (sigmoid > 0.5), two classes."""
    from datasets import Dataset
    from PIL import Image

    import hf_seg
    from hf_seg.training.evaluation import evaluate_segmentation

    torch.manual_seed(3)
    pixel_values = torch.randn(2, 3, 32, 32)
    labels = torch.randint(0, 2, (2, 32, 32))
    labels[:, :4] = IGNORE
    processor = hf_seg.SetrImageProcessor(size={"height": 32, "width": 32}, do_resize=True)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)) for i in (0, 1)]
    for family, model in _binary_models().items():
        with subtests.test(family):
            model.eval()
            loss, outputs = _captured_loss(model, "bce", pixel_values, labels)
            torch.testing.assert_close(loss, outputs.loss, rtol=1e-6, atol=1e-7)
            with torch.set_grad_enabled(family == "setr"):  # one backward is enough: the losses are family-agnostic
                value, _ = _captured_loss(model.train(), "bce+dice:3+lovasz(per_image=true)+focal", pixel_values,
                                          labels)
                if family == "setr":
                    value.backward()
            assert torch.isfinite(value)
            model.eval()
            with pytest.raises(ValueError, match=r"needs num_labels >= 2"):
                parse_head_losses("ce").head_specs(model)
            if family != "segformer":  # transformers' own Segformer does not check its labels
                with pytest.raises(ValueError, match=r"\[2\]"):
                    model(pixel_values=pixel_values, labels=labels.masked_fill(labels == 0, 2))

            maps, probabilities = hf_seg.segment(model, processor, images, return_probabilities=True)
            with torch.no_grad():
                logits = model(pixel_values=processor(images, return_tensors="pt")["pixel_values"]).logits
            expected = F.interpolate(logits, size=(32, 32), mode="bilinear")[:, 0] > 0
            assert torch.equal(torch.stack(maps), expected.long())
            assert probabilities[0].shape == (2, 32, 32)
            torch.testing.assert_close(probabilities[0][1], F.interpolate(logits, size=(32, 32), mode="bilinear")[0, 0]
                                       .sigmoid())
            if family != "setr":  # the evaluation reads segment()'s maps, the same for every family
                continue
            truth = [Image.fromarray(np.asarray(m, dtype=np.uint8)) for m in maps]
            metrics = evaluate_segmentation(model, processor, Dataset.from_dict({"image": images, "label": truth}),
                                            id2label=model.config.id2label)
            assert metrics["overall_accuracy"] == 1.0 and {"iou_background", "iou_foreground"} <= set(metrics)


def test_class_weights_from_the_training_split(tmp_path, capsys):
    """inverse / median frequency from per-class pixel counts (the latter over the images holding each class), and
    `train(class_weights=...)` gives them to the default cross-entropy, prints them and saves them in recipe.json."""
    import json

    from datasets import Dataset, DatasetDict
    from PIL import Image

    from hf_seg.training import train
    from hf_seg.training.losses import class_weights_from_counts, class_weights_from_data

    pixels, image_pixels = np.array([100, 10, 0, 50]), np.array([200, 100, 0, 100])
    np.testing.assert_allclose(class_weights_from_counts(pixels, image_pixels, "median_frequency"), [1, 5, 1, 1])
    np.testing.assert_allclose(class_weights_from_counts(pixels, image_pixels, "inverse_frequency"),
                               [160 / 300, 160 / 30, 1, 160 / 150])
    maps = [np.kron(np.array([[0, 0, 1, 255]] * 4), np.ones((8, 8))).astype(np.uint8),
            np.kron(np.array([[0, 2, 2, 2]] * 4), np.ones((8, 8))).astype(np.uint8)]  # 32 x 32
    images = [Image.fromarray(np.zeros((32, 32, 3), np.uint8))] * 2
    split = Dataset.from_dict({"image": images, "label": [Image.fromarray(m) for m in maps]})
    # class 0: 8 + 4 pixels in images of 12 + 16 labelled pixels; class 1: 4 of 12; class 2: 12 of 16
    expected = class_weights_from_counts(np.array([12, 4, 12]), np.array([28, 12, 16]), "median_frequency")
    assert class_weights_from_data(split, "label", 3, "median_frequency") == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match=r"label values \[2\] outside the 2 classes"):
        class_weights_from_data(split, "label", 2, "median_frequency")

    from tiny_models import tiny_segformer

    model = tiny_segformer()
    model.config.num_labels, model.config.id2label = 3, {0: "a", 1: "b", 2: "c"}
    model.decode_head.classifier = torch.nn.Conv2d(16, 3, 1)
    result = train(model, DatasetDict(train=split), output_dir=str(tmp_path), class_weights="median_frequency",
                   image_processor=hf_seg_processor(), recipe_overrides=dict(crop_size=32, train_scale=(64, 32)),
                   training_args=dict(max_steps=1, warmup_steps=0, per_device_train_batch_size=2, use_cpu=True,
                                      save_strategy="no"),
                   do_eval=False, eval_split=None)
    weights = [round(float(w), 6) for w in expected]
    assert "class weights (median_frequency of split 'train'): a 1, b 1.286, c 0.5714" in capsys.readouterr().err
    saved = json.loads((tmp_path / "recipe.json").read_text())
    assert saved["class_weights"] == {"method": "median_frequency", "split": "train", "weights": weights}
    assert saved["loss"] == f"ce(avg_non_ignore=true,class_weight=[{','.join(repr(w) for w in weights)}]):1.0"
    assert result.trainer.head_losses is not None


def hf_seg_processor():
    import hf_seg

    return hf_seg.SetrImageProcessor(size={"height": 32, "width": 32}, do_resize=True)
