"""FSDP under `accelerate launch --config_file fsdp.yaml` on two CPU processes (gloo), for a tiny model of each family.

What accelerate 1.15 does on CPU, and what is therefore proven here:

- accelerate enables FSDP only for GPU-like devices (`AcceleratorState` turns `ACCELERATE_USE_FSDP` into
  `DistributedType.FSDP` for MULTI_GPU / XPU / NPU / ... only): on CPU the FSDP config file is silently ignored and
  `Trainer` trains with DDP. `test_accelerate_runs_fsdp_on_cpu` records that (xfail, strict).
- To run FSDP at all, the launched script lifts that one gate (`_LIFT_CPU_GATE`: the state's distributed type becomes
  FSDP with the plugin accelerate built from the config file). Everything else is what a GPU user runs: accelerate's
  FSDP2 preparation (`fully_shard` per transformer layer, then the root), `Trainer`'s FSDP paths (gradient clipping,
  saving), hf_seg's optimizer groups over the sharded (DTensor) parameters, and hf_seg's final save.
- FSDP2 (the version `accelerate config` proposes) with the `SHARDED_STATE_DICT` it proposes: training runs, the
  saved folder holds the full, unsharded weights and loads with `AutoModelForSemanticSegmentation.from_pretrained`,
  and its parameters equal a one-process run's within 1e-5.
- FSDP1 does not run on CPU (torch's FSDP1 computes on a CUDA-like device) and FSDP2 with
  `fsdp_cpu_ram_efficient_loading: true` fails on the models' BatchNorm buffers: both recorded as strict xfails with
  the exact error.

Same seed, same total batch: two processes x per-device batch B against one process x B x 2 accumulation steps. Every
family has BatchNorm (the decode heads; MPViT's stem), whose batch statistics are per process under FSDP (no
SyncBatchNorm), so the one-process run must see the same micro-batches: B images at a time, the two processes' batches
in the order the sharded sampler hands them out (rank 0 takes the first B of each 2B, the same seeded permutation).
Dropout and drop-path are off (their draws are per process); the augmentations are seeded per example and epoch.

DeepSpeed (ZeRO-2 and ZeRO-3, `hf-seg train ... --deepspeed ds.json` under `torchrun`, DeepSpeed's CPU accelerator
over gloo) is held to the same one-process references where deepspeed is installed (it is not one of hf_seg's
dependencies; without it those tests skip). Its first run compiles DeepSpeed's shared-memory communication op (about
7 minutes on a 2-core machine; cached in ~/.cache/torch_extensions afterwards).
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import hf_seg
from hf_seg.data.quickstart import QUICKSTART_LABELS, make_quickstart_dataset
from tiny_models import TINY_SETR, tiny_mpvit, tiny_segformer

FAMILIES = ("setr", "segformer", "mpvit")
#: the auto-wrap policy: each family's transformer layer class gets its own FSDP unit (the root holds the rest).
#: `accelerate config`'s other choice, "the model's `_no_split_modules`", fails for transformers' Segformer, whose
#: `_no_split_modules` names `SegformerStage`, a class its models do not use.
LAYER_CLASSES = {"setr": "SetrLayer", "segformer": "SegformerLayer", "mpvit": "MPViTLayer"}
#: per-device batch: UperNet's pyramid pooling normalises a 1x1 map with BatchNorm, so MPViT needs 2 per device
BATCH = {"setr": 1, "segformer": 1, "mpvit": 2}
MAX_STEPS = 3  # MPViT (total batch 4, 8 images) crosses an epoch: the reshuffle and the new augmentation draws too
TOLERANCE = 1e-5

#: `accelerate config`'s answers for FSDP2, except fsdp_cpu_ram_efficient_loading (its default, true, fails on
#: BatchNorm buffers: see test_fsdp2_cpu_ram_efficient_loading); the layer class (fsdp_transformer_layer_cls_to_wrap)
#: is per family, so the launched script sets it for each family's run as accelerate launch would from that line
FSDP2_CONFIG = textwrap.dedent(
    """\
    compute_environment: LOCAL_MACHINE
    debug: false
    distributed_type: FSDP
    downcast_bf16: 'no'
    fsdp_config:
      fsdp_activation_checkpointing: false
      fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
      fsdp_cpu_ram_efficient_loading: false
      fsdp_offload_params: false
      fsdp_reshard_after_forward: true
      fsdp_state_dict_type: SHARDED_STATE_DICT
      fsdp_version: 2
    machine_rank: 0
    main_training_function: main
    mixed_precision: 'no'
    num_machines: 1
    num_processes: 2
    rdzv_backend: static
    same_network: true
    use_cpu: false
    """
)


def tiny_model(family: str):
    """tests/tiny_models.py's model of `family` with the quickstart's 6 classes, no dropout / drop-path (their random
    draws differ per process) and, for SETR, a trainable initialisation (0.02 instead of the inference tests' 0.5)."""
    id2label = dict(enumerate(QUICKSTART_LABELS))
    labels = dict(num_labels=len(id2label), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    if family == "setr":
        torch.manual_seed(0)
        return hf_seg.create_model("setr-pup-vit-large-ade20k-512", **{**TINY_SETR, "initializer_range": 0.02,
                                                                        **labels}, auxiliary_in_indices=[1, 2])
    shared = {"segformer": tiny_segformer, "mpvit": tiny_mpvit}[family]()
    config = shared.config
    config.update(dict(drop_path_rate=0.0, classifier_dropout_prob=0.0, **labels))
    torch.manual_seed(0)
    return type(shared)(config)


def train_family(family: str, data_dir, out_dir, accumulation: int = 1, max_steps: int = MAX_STEPS, **arguments):
    """hf_seg.training.train on the tiny model: the same call in the launched processes and in the references
    (`arguments`: more TrainingArguments, e.g. deepspeed=...)."""
    from hf_seg.training import get_recipe, train

    recipe = {"setr": "setr-pup-ade20k-512", "segformer": "segformer-ade20k-512",
              "mpvit": "upernet-mpvit-ade20k-512"}[family]
    recipe = get_recipe(recipe, crop_size=64, train_scale=(128, 64), ratio_range=(1.0, 1.5), learning_rate=0.01,
                        warmup_steps=1, photometric=False)
    processor = hf_seg.SetrImageProcessor(size={"shortest_edge": 64, "longest_edge": 128}, size_divisor=1)
    # adam_epsilon 1e-4 (AdamW recipes: SegFormer, MPViT; 1e-8 by default): some parameters' gradients are rounding
    # noise (1e-15 .. 1e-9: biases just before a BatchNorm / LayerNorm, which removes any constant, and attention's key
    # bias), and Adam divides the noise by its own size, so with 1e-8 those parameters move by a sizeable part of the
    # learning rate in a direction that depends on the order of the sums: two correct runs then differ there by up to
    # 6e-3 (DeepSpeed's reductions vs one process: 7 of Segformer's 123 tensors). 1e-4 keeps those still; every run
    # compared here uses it.
    return train(tiny_model(family), str(data_dir), output_dir=str(out_dir), recipe=recipe,
                 image_processor=processor, id2label=dict(enumerate(QUICKSTART_LABELS)), reduce_labels=False,
                 eval_split=None, do_eval=False,  # evaluation under FSDP: `hf-seg evaluate` on the saved folder
                 training_args=dict(max_steps=max_steps, per_device_train_batch_size=BATCH[family],
                                    gradient_accumulation_steps=accumulation, save_strategy="no", use_cpu=True,
                                    disable_tqdm=True, logging_steps=1, seed=5, adam_epsilon=1e-4, **arguments))


SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    started = time.time()
    tests_dir, data_dir, out_root = sys.argv[1:4]
    sys.path.insert(0, tests_dir)
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor
    from test_training_fsdp import FAMILIES, LAYER_CLASSES, train_family

    record = {"seconds": {"imports": round(time.time() - started, 1)}}

    def timed(name, since):
        record["seconds"][name] = round(time.time() - since, 1)
        return time.time()

    def error_of(run):
        try:
            run()
        except Exception as error:  # noqa: BLE001 - recorded for the test to show
            return f"{type(error).__name__}: {error}".splitlines()[0][:400]
        return None

    # 1. accelerate as it is: the FSDP config on CPU
    since = time.time()
    trainer = train_family("segformer", data_dir, out_root + "/as_is", max_steps=2).trainer
    record["as_is"] = dict(distributed_type=str(trainer.accelerator.distributed_type),
                           is_fsdp_enabled=bool(trainer.is_fsdp_enabled),
                           wrapper=type(trainer.model_wrapped).__name__, world_size=trainer.args.world_size)
    since = timed("as_is", since)

    # 2. the CPU gate lifted: a state created on CPU with an FSDP plugin (from the config file) is an FSDP state
    original_init = AcceleratorState.__init__

    def _LIFT_CPU_GATE(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # what accelerate's branch for GPU-like devices does (it also tells the PartialState, which later
            # AcceleratorState() calls copy from)
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = _LIFT_CPU_GATE

    def fresh_state(**env):  # as a new `accelerate launch` with these config values would start
        AcceleratorState._reset_state()  # the process group stays
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU
        os.environ.update(env)

    for family in FAMILIES:
        # accelerate launch writes the config's fsdp_transformer_layer_cls_to_wrap into this variable
        fresh_state(FSDP_TRANSFORMER_CLS_TO_WRAP=LAYER_CLASSES[family])
        trainer = train_family(family, data_dir, f"{out_root}/{family}").trainer
        model = trainer.model_wrapped
        params = list(model.parameters())
        record[family] = dict(
            is_fsdp_enabled=bool(trainer.is_fsdp_enabled),
            fsdp_version=trainer.accelerator.state.fsdp_plugin.fsdp_version,
            state_dict_type=str(trainer.accelerator.state.fsdp_plugin.state_dict_type),
            wrapper=type(model).__name__, world_size=trainer.args.world_size,
            fsdp_units=sum(isinstance(m, FSDPModule) for m in model.modules()),
            layers=sum(LAYER_CLASSES[family] in {c.__name__ for c in type(m).__mro__} for m in model.modules()),
            all_dtensors=all(isinstance(p, DTensor) for p in params),
            local_numel=sum(p.to_local().numel() for p in params), numel=sum(p.numel() for p in params),
            losses=[entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
        since = timed(family, since)

    # 3. the configurations that do not run here, with their errors
    fresh_state(FSDP_TRANSFORMER_CLS_TO_WRAP="SegformerLayer", FSDP_CPU_RAM_EFFICIENT_LOADING="true")
    record["cpu_ram_efficient_loading"] = error_of(
        lambda: train_family("segformer", data_dir, out_root + "/ram", max_steps=2))
    fresh_state(FSDP_VERSION="1", FSDP_CPU_RAM_EFFICIENT_LOADING="false", FSDP_SYNC_MODULE_STATES="false",
                FSDP_USE_ORIG_PARAMS="true", FSDP_RESHARD_AFTER_FORWARD="FULL_SHARD")
    record["fsdp1"] = error_of(lambda: train_family("segformer", data_dir, out_root + "/fsdp1", max_steps=2))
    timed("errors", since)
    if torch.distributed.get_rank() == 0:
        with open(out_root + "/fsdp.json", "w") as handle:
            json.dump(record, handle)
    """
)


DEEPSPEED_CONFIGS = {  # "auto": Trainer fills the batch size, accumulation and clipping (max_grad_norm) in
    2: {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_optimization": {"stage": 2}, "zero_allow_untested_optimizer": True},
    3: {"train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True,
                              "stage3_param_persistence_threshold": 0},
        "zero_allow_untested_optimizer": True},
}
# zero_allow_untested_optimizer: hf_seg's recipes build their own torch optimizer (parameter groups with the head's lr
# multiplier and the decay exclusions), which DeepSpeed wraps; stage3_gather_16bit_weights_on_model_save: the saved
# folder gets the gathered weights (in the training dtype, float32 here) instead of ZeRO-3 partitions;
# stage3_param_persistence_threshold 0: the tiny models' parameters (all under its default, 1e5 elements) are
# partitioned too, instead of kept whole on every process

DEEPSPEED_SCRIPT = textwrap.dedent(
    """
    import json, sys
    tests_dir, data_dir, out_root = sys.argv[1:4]
    sys.path.insert(0, tests_dir)
    import torch
    from accelerate.state import AcceleratorState
    from test_training_fsdp import DEEPSPEED_CONFIGS, FAMILIES, train_family

    record = {}
    for stage in DEEPSPEED_CONFIGS:
        for family in FAMILIES:
            AcceleratorState._reset_state()  # each run's DeepSpeed plugin from its own arguments, as in a new launch
            trainer = train_family(family, data_dir, f"{out_root}/zero{stage}/{family}",
                                   deepspeed=f"{out_root}/zero{stage}.json").trainer
            record[f"zero{stage}/{family}"] = dict(
                is_deepspeed_enabled=bool(trainer.is_deepspeed_enabled), world_size=trainer.args.world_size,
                zero_stage=trainer.accelerator.state.deepspeed_plugin.zero_stage,
                wrapper=type(trainer.model_wrapped).__name__,
                backend=torch.distributed.get_backend(),
                # ZeRO-3's partitions: the elements this process holds of each parameter (ds_tensor) and in all
                local_numel=sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                                for p in trainer.model_wrapped.module.parameters()),
                numel=sum(getattr(p, "ds_numel", p.numel()) for p in trainer.model_wrapped.module.parameters()),
                losses=[entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    if torch.distributed.get_rank() == 0:
        with open(out_root + "/deepspeed.json", "w") as handle:
            json.dump(record, handle)
    """
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(command, log_path, env):
    with open(log_path, "w") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def _finish(launched, log_path, what: str):
    returncode = launched.wait(timeout=600)
    assert returncode == 0, f"{what} failed:\n" + Path(log_path).read_text()[-8000:]


_ENV = {"OMP_NUM_THREADS": "1", "HF_SEG_TEST_THREADS": "1"}


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """One `accelerate launch` (two processes) for every FSDP case; the one-process references train here meanwhile.
    Returns the folder, the launched processes' record and the references' logged losses."""
    root = tmp_path_factory.mktemp("fsdp")
    data_dir = root / "data"
    make_quickstart_dataset(num_train=8, num_validation=1, size=40, seed=2).save_to_disk(str(data_dir))
    (root / "fsdp.yaml").write_text(FSDP2_CONFIG)
    (root / "run.py").write_text(SCRIPT)
    start = time.time()
    launched = _launch(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(root / "fsdp.yaml"),
         "--main_process_port", str(_free_port()), str(root / "run.py"), str(Path(__file__).parent), str(data_dir),
         str(root / "out")],
        root / "launch.log", {**os.environ, **_ENV},
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes
    try:
        reference_losses = {}
        for family in FAMILIES:
            state = train_family(family, data_dir, root / "reference" / family, accumulation=2).trainer.state
            reference_losses[family] = [entry["loss"] for entry in state.log_history if "loss" in entry]
    finally:
        torch.set_num_threads(threads)
        references_s = time.time() - start
        _finish(launched, root / "launch.log", "accelerate launch")
    record = json.loads((root / "out" / "fsdp.json").read_text())
    print(f"\naccelerate launch: {time.time() - start:.1f} s (in the processes: {record['seconds']}); one-process "
          f"references (meanwhile): {references_s:.1f} s")
    return root, record, reference_losses


def assert_matches_reference(folder, root, family, losses, reference_losses, what):
    """The folder a distributed run saved: one full safetensors file that loads with the Auto class, parameters
    within TOLERANCE of the one-process run's, the same logged losses."""
    from transformers import AutoModelForSemanticSegmentation

    # the logged losses: the mean over both processes' micro-batches, and over the accumulated ones in the reference
    assert len(losses) == len(reference_losses[family]) == MAX_STEPS
    assert losses == pytest.approx(reference_losses[family], rel=1e-5), (losses, reference_losses[family])
    assert sorted(path.name for path in folder.glob("*.safetensors")) == ["model.safetensors"], sorted(folder.iterdir())
    loaded, info = AutoModelForSemanticSegmentation.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    reference = AutoModelForSemanticSegmentation.from_pretrained(str(root / "reference" / family))
    initial = tiny_model(family)
    assert type(loaded) is type(reference) is type(initial)
    params = dict(loaded.named_parameters())
    reference_params = dict(reference.named_parameters())
    assert params.keys() == reference_params.keys() == dict(initial.named_parameters()).keys()
    assert all(p.dtype == torch.float32 for p in params.values())
    differences = {name: (params[name] - reference_params[name]).abs().max().item() for name in params}
    worst = max(differences, key=differences.get)
    moved = max((reference_params[n] - p).abs().max().item() for n, p in initial.named_parameters())
    print(f"{what} {family}: {len(differences)} parameters, max |distributed - one process| = "
          f"{differences[worst]:.3g} ({worst}); max |trained - initial| = {moved:.3g}; losses {losses}")
    assert moved > 1e-3  # the runs trained: the equality below is not between two copies of the initialisation
    assert differences[worst] <= TOLERANCE, (worst, differences[worst])
    # BatchNorm running statistics are per process (rank 0's are saved); they are buffers, not trained weights, and
    # the one-process run updates them once per micro-batch, so they are only checked for having been trained
    running = [buffer for name, buffer in loaded.named_buffers() if name.endswith("running_var")]
    assert running and all(torch.isfinite(b).all() and not torch.equal(b, torch.ones_like(b)) for b in running)


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_two_cpu_processes_match_one_process(fsdp_runs, family):
    root, record, reference_losses = fsdp_runs
    run = record[family]
    assert run["is_fsdp_enabled"] and run["fsdp_version"] == 2 and run["world_size"] == 2, run
    assert "SHARDED_STATE_DICT" in run["state_dict_type"]  # hf_seg still saves the full weights at the end
    assert run["wrapper"].startswith("FSDP"), run  # fully_shard's class swap: FSDP<ModelClass>
    assert run["layers"] >= 4 and run["fsdp_units"] >= run["layers"] + 1, run  # a unit per layer, and the root
    assert run["all_dtensors"] and run["local_numel"] < 0.6 * run["numel"], run  # each process holds about half
    folder = root / "out" / family
    assert not list(folder.glob("pytorch_model_fsdp*"))
    assert_matches_reference(folder, root, family, run["losses"], reference_losses, "FSDP2")


@pytest.fixture(scope="module")
def deepspeed_runs(fsdp_runs):
    """One `torchrun` (two processes) training every family with ZeRO-2, then ZeRO-3 (`--deepspeed ds.json`)."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (not one of hf_seg's dependencies)")
    root = fsdp_runs[0]
    out = root / "deepspeed"
    out.mkdir()
    for stage, config in DEEPSPEED_CONFIGS.items():
        (out / f"zero{stage}.json").write_text(json.dumps(config))
    (root / "deepspeed_run.py").write_text(DEEPSPEED_SCRIPT)
    start = time.time()
    launched = _launch(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(root / "deepspeed_run.py"), str(Path(__file__).parent), str(root / "data"), str(out)],
        root / "deepspeed.log", {**os.environ, **_ENV},
    )
    _finish(launched, root / "deepspeed.log", "torchrun with --deepspeed")
    print(f"\ntorchrun --deepspeed: {time.time() - start:.1f} s")
    return json.loads((out / "deepspeed.json").read_text())


@pytest.mark.parametrize("stage", sorted(DEEPSPEED_CONFIGS))
@pytest.mark.parametrize("family", FAMILIES)
def test_deepspeed_two_cpu_processes_match_one_process(fsdp_runs, deepspeed_runs, stage, family):
    root, _, reference_losses = fsdp_runs
    run = deepspeed_runs[f"zero{stage}/{family}"]
    assert run["is_deepspeed_enabled"] and run["zero_stage"] == stage and run["world_size"] == 2, run
    assert run["wrapper"] == "DeepSpeedEngine" and run["backend"] == "gloo", run
    if stage == 3:  # each process holds about half of every parameter (ZeRO-2 partitions gradients and optimizer)
        assert run["local_numel"] < 0.6 * run["numel"], run
    assert_matches_reference(root / "deepspeed" / f"zero{stage}" / family, root, family, run["losses"],
                             reference_losses, f"DeepSpeed ZeRO-{stage}")


@pytest.mark.xfail(strict=True, reason="accelerate 1.15 enables FSDP only on GPU-like devices: on CPU "
                   "`accelerate launch --config_file fsdp.yaml` trains with DDP (Trainer.is_fsdp_enabled False, "
                   "DistributedDataParallel), without a warning")
def test_accelerate_runs_fsdp_on_cpu(fsdp_runs):
    record = fsdp_runs[1]
    as_is = record["as_is"]
    assert as_is["world_size"] == 2
    assert as_is["is_fsdp_enabled"], as_is  # fails: {'distributed_type': 'DistributedType.MULTI_CPU', ...}


@pytest.mark.xfail(strict=True, reason="accelerate 1.15's FSDP2 loader (fsdp2_load_full_state_dict) treats every "
                   "state-dict entry as a sharded parameter: \"AttributeError: 'Tensor' object has no attribute "
                   "'device_mesh'\" at the first BatchNorm buffer (every family has BatchNorm)")
def test_fsdp2_cpu_ram_efficient_loading(fsdp_runs):
    record = fsdp_runs[1]
    assert record["cpu_ram_efficient_loading"] is None, record["cpu_ram_efficient_loading"]


@pytest.mark.xfail(strict=True, reason="torch 2.13's FSDP1 computes on a CUDA-like device only: \"ValueError: "
                   "Inconsistent compute device and `device_id` on rank 0: cpu vs cpu:0\" when wrapping the first "
                   "layer on CPU")
def test_fsdp1_on_cpu(fsdp_runs):
    record = fsdp_runs[1]
    assert record["fsdp1"] is None, record["fsdp1"]


def test_families_have_no_input_embeddings():
    """Why hf_seg's SegmentationTrainer gives these models `get_input_embeddings() -> None` under FSDP2: accelerate's
    FSDP2 preparation calls it, and transformers raises for all three families (FSDP2 stopped before training)."""
    from hf_seg.training.trainer import _without_fsdp2_input_embedding_unit

    for family in FAMILIES:
        model = tiny_model(family)
        with pytest.raises(NotImplementedError, match="get_input_embeddings"):
            model.get_input_embeddings()
        _without_fsdp2_input_embedding_unit(model)
        assert model.get_input_embeddings() is None
