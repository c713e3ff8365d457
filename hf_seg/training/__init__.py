"""Fine-tuning with `transformers.Trainer`: the papers' recipes, optimizer groups and schedules, the papers' evaluation
protocol, model cards and Hub pushes; `train_main` / `evaluate_main` / `quickstart_main` are `hf-seg train`,
`hf-seg evaluate` and `hf-seg quickstart`."""

from .commands import evaluate_main, parse_train_args, quickstart_main, train_main
from .evaluation import evaluate_segmentation
from .lora import LORA_SPECS, LoraRun, LoraSettings, LoraSpec, apply_lora
from .pretrained import load_pretrained_encoder
from .recipes import (
    RECIPES,
    Recipe,
    build_parameter_groups,
    create_optimizer,
    get_recipe,
    list_recipes,
    poly_learning_rate,
    poly_schedule,
    recipe_name_for_preset,
)
from .trainer import (
    SegmentationTrainer,
    TrainResult,
    build_model_and_processor,
    build_training_arguments,
    evaluate_model,
    push_folder_to_hub,
    train,
    write_model_card,
)

__all__ = [
    "LORA_SPECS",
    "LoraRun",
    "LoraSettings",
    "LoraSpec",
    "RECIPES",
    "Recipe",
    "SegmentationTrainer",
    "TrainResult",
    "apply_lora",
    "build_model_and_processor",
    "build_parameter_groups",
    "build_training_arguments",
    "create_optimizer",
    "evaluate_main",
    "evaluate_model",
    "evaluate_segmentation",
    "get_recipe",
    "list_recipes",
    "load_pretrained_encoder",
    "parse_train_args",
    "poly_learning_rate",
    "poly_schedule",
    "push_folder_to_hub",
    "quickstart_main",
    "recipe_name_for_preset",
    "train",
    "train_main",
    "write_model_card",
]
