"""nnU-Net v2 trained inside a wall-clock budget, then run on test images (helper of bench/peer_nnunet.py).

Runs with the Python of nnU-Net's own environment (it imports nnunetv2, never dfseg); `make bench`
skips it. nnU-Net's plans, network, loss, augmentation, optimiser and poly schedule are its own; what
the budget changes is the schedule's length: after the first epoch the number of epochs becomes what
fits the budget (the poly learning rate then reaches zero at the last one), and the run stops early
if later epochs slow down. Epochs are ``--iterations`` long (nnU-Net's default 250 makes one epoch
longer than a CPU budget). The final weights (nnU-Net's default ``checkpoint_final``) predict the test
images, with nnU-Net's default sliding window (step 0.5, Gaussian) and mirroring unless
``--no-mirroring``; the tumour probability is written on each image's own grid as
``<case>_prob.nii.gz``.

    python _nnunet_budget.py --dataset 501 --budget-min 10 --out DIR --test-images DIR/imagesTs
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name


class nnUNetTrainerBudget(nnUNetTrainer):  # noqa: N801 (nnU-Net's naming)
    """nnU-Net's trainer with the number of epochs set by a wall-clock budget (``budget_s``)."""

    budget_s: float = 600.0
    iterations: int = 25

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:  # noqa: B008 (nnU-Net's signature)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_iterations_per_epoch = self.iterations
        self.num_val_iterations_per_epoch = max(self.iterations // 5, 1)
        self.num_epochs = 10_000  # replaced by what fits once the first epoch is timed
        self.planned_epochs: int | None = None

    def run_training(self) -> None:
        start = time.perf_counter()
        self.on_train_start()
        done = 0
        while self.current_epoch < self.num_epochs:
            self.on_epoch_start()
            self.on_train_epoch_start()
            outputs = [self.train_step(next(self.dataloader_train)) for _ in range(self.num_iterations_per_epoch)]
            self.on_train_epoch_end(outputs)
            with torch.no_grad():
                self.on_validation_epoch_start()
                val = [self.validation_step(next(self.dataloader_val)) for _ in range(self.num_val_iterations_per_epoch)]
                self.on_validation_epoch_end(val)
            self.on_epoch_end()
            done += 1
            elapsed = time.perf_counter() - start
            per_epoch = elapsed / done
            if self.planned_epochs is None:
                self.planned_epochs = max(done, int(self.budget_s / per_epoch))
                self.num_epochs = self.planned_epochs
                self.lr_scheduler.max_steps = self.planned_epochs
                self.print_to_log_file(f"budget {self.budget_s:.0f} s: {self.planned_epochs} epochs of "
                                       f"{per_epoch:.1f} s planned")
            elif elapsed + per_epoch > self.budget_s:
                self.print_to_log_file(f"budget {self.budget_s:.0f} s: stopping after epoch {done}")
                break
        self.on_train_end()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", required=True, help="nnU-Net dataset id or name")
    ap.add_argument("--configuration", default="3d_fullres")
    ap.add_argument("--plans", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--budget-min", type=float, required=True)
    ap.add_argument("--iterations", type=int, default=25, help="training iterations per epoch (nnU-Net: 250)")
    ap.add_argument("--out", type=Path, required=True, help="folder for <case>_prob.nii.gz and timing.json")
    ap.add_argument("--test-images", type=Path, required=True, help="imagesTs: <case>_0000.nii.gz ...")
    ap.add_argument("--no-mirroring", action="store_true", help="no test-time mirroring")
    args = ap.parse_args()

    torch.manual_seed(0)
    np.random.seed(0)
    name = maybe_convert_to_dataset_name(args.dataset)
    pre = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((pre / f"{args.plans}.json").read_text())
    plans["continue_training"] = False
    dataset_json = json.loads((pre / "dataset.json").read_text())
    nnUNetTrainerBudget.budget_s = 60.0 * args.budget_min
    nnUNetTrainerBudget.iterations = args.iterations
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = nnUNetTrainerBudget(plans=plans, configuration=args.configuration, fold=args.fold,
                                  dataset_json=dataset_json, device=device)
    t0 = time.perf_counter()
    trainer.run_training()
    train_s = time.perf_counter() - t0

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=not args.no_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                allow_tqdm=False)
    trainer.set_deep_supervision_enabled(False)  # as nnU-Net's own final validation does
    trainer.network.eval()
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager,
                                    [trainer.network.state_dict()], trainer.dataset_json,
                                    type(trainer).__name__, trainer.inference_allowed_mirroring_axes)
    reader = trainer.plans_manager.image_reader_writer_class()
    ending = dataset_json["file_ending"]
    n_channels = len(dataset_json["channel_names"])
    cases = sorted({p.name[: -len(ending) - 5] for p in args.test_images.glob(f"*_0000{ending}")})
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for case in cases:
        files = [str(args.test_images / f"{case}_{c:04d}{ending}") for c in range(n_channels)]
        image, props = reader.read_images(files)
        _, probs = predictor.predict_single_npy_array(image, props, None, None, True)
        ref = sitk.ReadImage(files[0])
        out = sitk.GetImageFromArray(np.asarray(probs[1], dtype=np.float32))  # (z, y, x) as SimpleITK reads
        out.CopyInformation(ref)
        sitk.WriteImage(out, str(args.out / f"{case}_prob.nii.gz"))
        print(f"predicted {case}", flush=True)
    infer_s = time.perf_counter() - t0
    timing = {"train_s": train_s, "infer_s": infer_s, "planned_epochs": trainer.planned_epochs,
              "completed_epochs": int(trainer.current_epoch), "iterations_per_epoch": trainer.num_iterations_per_epoch,
              "patch_size": list(trainer.configuration_manager.patch_size),
              "batch_size": int(trainer.configuration_manager.batch_size),
              "mirroring": not args.no_mirroring, "device": str(device), "cases": cases}
    (args.out / "timing.json").write_text(json.dumps(timing, indent=2))
    print(json.dumps(timing))


if __name__ == "__main__":
    main()
