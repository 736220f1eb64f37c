"""``pose_train``: train the correspondence network on samples rendered on the fly.

Objects: procedural shapes of the training split (:data:`pose_node.datasets.splits.PROCEDURAL_SEEDS`)
and the *training-split* objects of the BOP models directories (``--bop-models``; default: the
YCB folders beside the repository, ``../shared/data/ycb_dev`` and ``ycb_train``, when present),
chosen by :func:`pose_node.datasets.splits.training_ycb_models` so that validation and test objects are
never loaded; ``--holdout`` removes more ids.

Appearance: ``--appearance randomized`` (default) relights every sample in linear light and passes
it through a random colour camera (:mod:`pose_node.training.domain_randomization`);
``--appearance shipped-effl0`` reproduces the weak augmentation of the first shipped network.

Losses (weights in :class:`TrainConfig`): smooth-L1 on the normalized object coordinates of the
visible cells, binary cross-entropy on the visible-object mask and, after
``kl_start_step``, EPro-PnP's Monte Carlo KL loss on the pose (:mod:`pose_node.training.amis`),
which is what gives the weights their meaning (an inverse standard deviation in pixels).

The checkpoint (``--out``, a ``.pt`` file) holds the network's state dict, its architecture, the
training config and a log; ``--resume`` continues from one. Use :mod:`pose_node.correspondence.export`
to make the ONNX graphs.

Examples::

    pose_train --out models/correspondence_effl0.pt --minutes 100 --threads 2
    pose_train --out out/train/b.pt --resume out/train/a.pt --kl-start-step 0 --minutes 60
    pose_train --out out/train/dr.pt --resume models/correspondence_effl0.pt --minutes 58 --threads 1
    pose_train --ship out/train/b.pt --out models/correspondence_effl0.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pose_node.correspondence.network import CorrespondenceNet, CorrespondenceNetConfig, cell_centres_px
from pose_node.datasets.splits import (
    PROCEDURAL_FIRST_IDS,
    PROCEDURAL_SEEDS,
    YcbSplitModels,
    default_ycb_models_dirs,
    not_for_training,
    split_of_object_id,
    training_ycb_models,
)
from pose_node.training.correspondence_data import SHIPPED_EFFL0_SAMPLE_CONFIG, SampleConfig, TrainingBatch, TrainingSampler

logger = logging.getLogger(__name__)

# The split lives in pose_node.datasets.splits: never train on validation or test objects.
# Extra ids to hold out on top of the split (the split alone already excludes these).
DEFAULT_HOLDOUT_BOP_IDS: tuple[int, ...] = not_for_training()
APPEARANCES: dict[str, SampleConfig] = {"randomized": SampleConfig(), "shipped-effl0": SHIPPED_EFFL0_SAMPLE_CONFIG}
PROCEDURAL_TRAIN_SEED = PROCEDURAL_SEEDS["train"] * 1000


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings (saved with the weights).

    Attributes:
        batch_size: samples per step.
        learning_rate: AdamW rate of the new layers; the fine-tuned trunk blocks use
            ``trunk_learning_rate``.
        weight_decay: AdamW decay.
        coord_weight, mask_weight, kl_weight: loss weights.
        coord_beta: smooth-L1 transition, normalized units (radius = 1).
        kl_start_step: steps of coordinate and mask losses only before the KL loss joins in
            (the weights need sensible correspondences first).
        num_procedural: procedural training objects.
        seed: the single source of randomness.
    """

    batch_size: int = 16
    learning_rate: float = 1e-3
    trunk_learning_rate: float = 2e-4
    weight_decay: float = 1e-4
    coord_weight: float = 1.0
    mask_weight: float = 0.1
    kl_weight: float = 0.01
    coord_beta: float = 0.05
    kl_start_step: int = 1500
    num_procedural: int = 48
    seed: int = 0


def coordinate_loss(pred: torch.Tensor, gt: torch.Tensor, visible: torch.Tensor, beta: float) -> torch.Tensor:
    """Smooth-L1 over the visible cells. Args: pred, gt (B, N, 3); visible (B, N). Returns ()."""
    per_cell = F.smooth_l1_loss(pred, gt, beta=beta, reduction="none").sum(-1)
    return (per_cell * visible).sum() / visible.sum().clamp_min(1.0)


def pose_kl_loss(batch: TrainingBatch, xyz_norm: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, float]:
    """EPro-PnP's Monte Carlo KL loss of a batch (one hypothesis per sample).

    Args:
        xyz_norm: (B, N, 3) predicted normalized coordinates. weights: (B, N, 2).
    Returns:
        the mean loss over the samples the solver handled, and that share of the batch.
    """
    from pose_node.training.amis import monte_carlo_pose_loss
    from pose_node.correspondence.pnp import PnPConfig, huber_delta, solve_pnp

    dtype = torch.float64
    center = torch.from_numpy(batch.sphere_center_obj_m).to(dtype)
    radius = torch.from_numpy(batch.sphere_radius_m).to(dtype)
    x3d = center[:, None] + radius[:, None, None] * xyz_norm.to(dtype)
    B, N, _ = x3d.shape
    x2d = cell_centres_px(int(round(math.sqrt(N))), dtype=dtype)[None].expand(B, N, 2)
    w2d = weights.to(dtype)
    K = torch.from_numpy(batch.K_crop).to(dtype)
    T_gt = torch.from_numpy(batch.T_crop_object_gt).to(dtype)
    inits = torch.stack([torch.from_numpy(batch.T_crop_object_init).to(dtype), T_gt], dim=1)
    config = PnPConfig(max_iterations=5)
    result = solve_pnp(x3d.detach(), x2d, w2d.detach(), K, inits, config=config)
    delta = huber_delta(x2d, w2d, config.huber_relative_delta)
    loss, _ = monte_carlo_pose_loss(x3d, x2d, w2d, K, delta, result.T_camera_object, result.covariance, T_gt)
    ok = result.valid & torch.isfinite(loss)
    return (loss[ok].mean() if bool(ok.any()) else loss.new_zeros(())), float(ok.float().mean())


def training_bop_objects(bop_models_dirs, holdout: tuple[int, ...] = ()) -> list[YcbSplitModels]:
    """The training-split objects of each BOP models directory, minus ``holdout``.

    Args:
        bop_models_dirs: BOP ``models`` directories (missing ones are skipped).
        holdout: ids never to load, on top of the validation and test splits.
    Returns:
        one :class:`YcbSplitModels` per existing directory (possibly with no ids).
    Raises:
        InvalidInputError: a selected id is not in the training split
            (:func:`pose_node.datasets.splits.training_ycb_models`).
    """
    existing = []
    for models_dir in bop_models_dirs:
        if (Path(models_dir) / "models_info.json").is_file():
            existing.append(models_dir)
        else:
            logger.warning("no BOP models in %s: skipped", models_dir)
    return training_ycb_models(existing, holdout)


def training_objects(num_procedural: int, bop_models_dirs, holdout: tuple[int, ...] = ()):
    """The procedural training-split objects and :func:`training_bop_objects` (loaded)."""
    from pose_node.onboarding.mesh_loading import load_bop_models
    from pose_node.onboarding.procedural import make_procedural_objects

    if isinstance(bop_models_dirs, (str, Path)):
        bop_models_dirs = [bop_models_dirs]
    models = make_procedural_objects(num_procedural, PROCEDURAL_SEEDS["train"], first_id=PROCEDURAL_FIRST_IDS["train"])
    for split_models in training_bop_objects(bop_models_dirs or [], holdout):
        if split_models.object_ids:
            models += load_bop_models(split_models.models_dir, object_ids=list(split_models.object_ids))
    return models


def train(out: Path, config: TrainConfig, net_config: CorrespondenceNetConfig, sample_config: SampleConfig,
          bop_models_dirs, holdout: tuple[int, ...], max_steps: int, max_minutes: float,
          resume: Path | None = None, device: str = "cpu") -> dict:
    """Train and save to ``out`` (every few minutes and at the end). Returns the log."""
    torch.manual_seed(config.seed)
    net = CorrespondenceNet(net_config).to(device)
    log: dict = {"steps": [], "wall_s": 0.0}
    step = 0
    if resume is not None:
        checkpoint = torch.load(resume, map_location=device, weights_only=False)
        net.load_state_dict(checkpoint["state_dict"])
        log = checkpoint.get("log", log)
        step = int(checkpoint.get("step", 0))
    for p in net.encoder.trunk_parameters(trainable=False):
        p.requires_grad_(False)
    new_layers = [p for n, p in net.named_parameters() if not n.startswith("encoder.trunk.")]
    optimizer = torch.optim.AdamW([
        {"params": new_layers, "lr": config.learning_rate},
        {"params": net.encoder.trunk_parameters(trainable=True), "lr": config.trunk_learning_rate},
    ], weight_decay=config.weight_decay)
    if resume is not None and "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    models = training_objects(config.num_procedural, bop_models_dirs, holdout)
    log["training_object_ids"] = [int(m.object_id) for m in models]
    logger.info("training on %d objects (ids %s)", len(models), log["training_object_ids"])
    sampler = TrainingSampler(models, net_config, sample_config, seed=config.seed + step)
    net.train()
    start = time.monotonic()
    last_save = start
    wall_before = float(log.get("wall_s", 0.0))
    running: dict[str, float] = {}
    first_step = step
    while step < max_steps and (time.monotonic() - start) < 60.0 * max_minutes:
        batch = sampler.sample_batch(config.batch_size)
        B = config.batch_size
        images = torch.cat([batch.crops, batch.template_rgb]).to(device)
        descriptors, features = net.encoder(images)
        head = net.head.run(descriptors[:B], features[:B], batch.detection_mask.to(device), descriptors[B:, None],
                           batch.template_xyz_norm[:, None].to(device), batch.template_mask[:, None].to(device))
        xyz, weights = head.xyz_norm[:, 0], head.weights[:, 0]
        losses = {
            "coord": coordinate_loss(xyz, batch.gt_xyz_norm.to(device), batch.gt_visible.to(device), config.coord_beta),
            "mask": F.binary_cross_entropy_with_logits(head.mask_logit, batch.gt_visible.to(device)),
        }
        total = config.coord_weight * losses["coord"] + config.mask_weight * losses["mask"]
        if step >= config.kl_start_step and config.kl_weight > 0:
            kl, kl_valid_fraction = pose_kl_loss(batch, xyz.cpu(), weights.cpu())
            losses["kl"] = kl
            total = total + config.kl_weight * kl.to(device)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        step += 1
        if not (bool(torch.isfinite(total)) and bool(torch.isfinite(grad_norm))):
            # One non-finite gradient (e.g. the Monte Carlo KL of a degenerate sample: masking the
            # loss does not mask a NaN in its backward pass) would turn every weight into NaN.
            log["skipped_steps"] = int(log.get("skipped_steps", 0)) + 1
            logger.warning("step %d: non-finite loss %.4g or gradient norm %.4g, update skipped (%d so far)", step,
                           float(total.detach()), float(grad_norm), log["skipped_steps"])
            continue
        optimizer.step()
        logged = {k: float(v.detach()) for k, v in losses.items()}
        if "kl" in losses:
            logged["kl_valid_fraction"] = kl_valid_fraction
        for k, value in logged.items():
            running[k] = 0.98 * running.get(k, value) + 0.02 * value
        if step % 50 == 0:
            entry = {"step": step, "wall_s": round(wall_before + time.monotonic() - start, 1),
                     **{k: round(v, 5) for k, v in running.items()},
                     "temperature": round(float(net.head.log_inv_temperature.detach().neg().exp()), 4)}
            log["steps"].append(entry)
            logger.info("%s", entry)
        if time.monotonic() - last_save > 300:
            _save(out, net, optimizer, config, net_config, sample_config, log, step, wall_before + time.monotonic() - start, holdout)
            last_save = time.monotonic()
    log["wall_s"] = round(wall_before + time.monotonic() - start, 1)
    _save(out, net, optimizer, config, net_config, sample_config, log, step, log["wall_s"], holdout)
    logger.info("trained %d steps (%d this run) in %.0f s total; saved %s", step, step - first_step, log["wall_s"], out)
    return log


def _save(out: Path, net, optimizer, config, net_config, sample_config, log, step, wall_s, holdout) -> None:
    log["wall_s"] = round(wall_s, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({
        "state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "log": log,
        "net_config": dataclasses.asdict(net_config), "train_config": dataclasses.asdict(config),
        "sample_config": json.loads(json.dumps(dataclasses.asdict(sample_config), default=str)),
        "holdout_bop_ids": list(holdout),
    }, tmp)
    tmp.replace(out)


def _describe_training_objects(checkpoint: dict) -> dict | str:
    """The training objects of a checkpoint by split (ids), or the old sentence for checkpoints without ids."""
    num_procedural = checkpoint.get("train_config", {}).get("num_procedural")
    ids = checkpoint.get("log", {}).get("training_object_ids")
    if ids is None:
        return f"{num_procedural} procedural (seeds {PROCEDURAL_TRAIN_SEED}+i) and the YCB dev objects minus holdout_bop_ids"
    by_split: dict[str, list[int]] = {}
    for object_id in ids:
        by_split.setdefault(str(split_of_object_id(int(object_id))), []).append(int(object_id))
    ycb = [i for i in ids if i < PROCEDURAL_FIRST_IDS["train"]]
    return {"procedural": f"{num_procedural} (seeds {PROCEDURAL_TRAIN_SEED}+i, ids {PROCEDURAL_FIRST_IDS['train']}+i)",
            "ycb_ids": ycb, "ids_by_split": by_split}


#: Metadata that describes one particular set of weights (how it was trained and measured): moved
#: under ``previous_weights`` when other weights are shipped over them, so it never describes the new ones.
PER_WEIGHTS_METADATA: tuple[str, ...] = ("training_runs", "hardware", "evaluation", "covariance_calibration", "ood_val", "fine_tune",
                                         "fine_tuned_from", "weights_selection", "validation_ar", "ood_test_reported_only",
                                         "in_domain_check")


def ship(checkpoint: Path, out: Path, notes: dict | None = None) -> None:
    """Write the weights to ship: the checkpoint without optimizer state (a quarter of the size).

    Args:
        checkpoint: a ``pose_train`` checkpoint. out: the weights file (``.pt``); its ``.json``
            metadata is updated.
        notes: extra metadata (command lines, hardware, numbers) merged into the ``.json``.
    """
    data = torch.load(checkpoint, map_location="cpu", weights_only=False)
    data.pop("optimizer", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    # What produced the weights, next to them (the benchmark adds calibration and numbers).
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if meta and meta.get("source_checkpoint") != str(checkpoint):
        previous = {k: meta.pop(k) for k in PER_WEIGHTS_METADATA if k in meta}
        previous.update({k: meta.get(k) for k in ("source_checkpoint", "steps", "train_wall_s", "covariance_scale") if k in meta})
        meta["previous_weights"] = previous
        if "covariance_scale" in meta:
            meta["covariance_scale_note"] = ("inherited from the previous weights (previous_weights); recalibrate with "
                                             "pose_correspondence_bench --calibrate --record")
    torch.save(data, out)
    log = data.get("log", {})
    meta.update({
        "weights": out.name, "source_checkpoint": str(checkpoint), "steps": int(data.get("step", 0)),
        "train_wall_s": log.get("wall_s"), "last_losses": (log.get("steps") or [{}])[-1],
        "net_config": data.get("net_config"), "train_config": data.get("train_config"), "sample_config": data.get("sample_config"),
        "holdout_bop_ids": data.get("holdout_bop_ids"),
        "training_objects": _describe_training_objects(data),
    })
    meta.update(notes or {})
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("shipped %s (step %d) to %s, %.1f MB", checkpoint, data.get("step", -1), out, out.stat().st_size / 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="checkpoint to write (.pt)")
    parser.add_argument("--resume", type=Path, default=None, help="continue from this checkpoint")
    parser.add_argument("--ship", type=Path, default=None, metavar="CHECKPOINT",
                        help="do not train: write CHECKPOINT without its optimizer state to --out (the file to ship)")
    parser.add_argument("--ship-notes", type=Path, default=None, metavar="JSON",
                        help="with --ship: a JSON object merged into the shipped metadata (commands, hardware, numbers)")
    parser.add_argument("--bop-models", type=Path, nargs="*", default=default_ycb_models_dirs(),
                        help="BOP models dirs whose training-split objects are trained on (pose_node.datasets.splits); "
                             "default: ../shared/data/ycb_dev and ycb_train models where present; none: procedural only")
    parser.add_argument("--holdout", type=int, nargs="*", default=list(DEFAULT_HOLDOUT_BOP_IDS),
                        help="BOP object ids never trained on, on top of the split's validation and test ids")
    parser.add_argument("--appearance", choices=sorted(APPEARANCES), default="randomized",
                        help="randomized: linear-light relighting and a random colour camera; shipped-effl0: the first net's weak augmentation")
    parser.add_argument("--steps", type=int, default=10**9, help="stop after this many steps (total, with --resume)")
    parser.add_argument("--minutes", type=float, default=120.0, help="stop after this much wall time (this run)")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--learning-rate", type=float, default=TrainConfig.learning_rate, help="AdamW rate of the head")
    parser.add_argument("--trunk-learning-rate", type=float, default=TrainConfig.trunk_learning_rate,
                        help="AdamW rate of the fine-tuned trunk blocks")
    parser.add_argument("--kl-start-step", type=int, default=TrainConfig.kl_start_step)
    parser.add_argument("--kl-weight", type=float, default=TrainConfig.kl_weight)
    parser.add_argument("--num-procedural", type=int, default=TrainConfig.num_procedural)
    parser.add_argument("--seed", type=int, default=TrainConfig.seed)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.ship is not None:
        notes = json.loads(args.ship_notes.read_text()) if args.ship_notes is not None else None
        if notes is not None and not isinstance(notes, dict):
            parser.error(f"--ship-notes {args.ship_notes}: expected a JSON object")
        ship(args.ship, args.out, notes)
        return 0
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    config = TrainConfig(batch_size=args.batch_size, learning_rate=args.learning_rate, trunk_learning_rate=args.trunk_learning_rate,
                         kl_start_step=args.kl_start_step, kl_weight=args.kl_weight,
                         num_procedural=args.num_procedural, seed=args.seed)
    np.random.seed(args.seed)
    train(args.out, config, CorrespondenceNetConfig(), APPEARANCES[args.appearance], args.bop_models, tuple(args.holdout), args.steps,
          args.minutes, args.resume, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
