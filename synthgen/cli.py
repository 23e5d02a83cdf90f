"""``synthgen`` command line: generate, finalize, validate, preview, status, report, export, adapt.

User mistakes (bad recipe, bad override, missing model files, a bad --out) print one line and exit
2; a run that stops (error budget, storage, incomplete finalize) one line and exit 1; an
interrupted run one line and exit 128 + the signal (130 SIGINT, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from synthgen import __version__
from synthgen.errors import ErrorBudgetExceeded, Interrupted, StorageError, UserError, WorkLost

log = logging.getLogger("synthgen")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthgen", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"synthgen {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="generate a dataset into --out")
    gen.add_argument("recipe", help="recipe YAML")
    gen.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    gen.add_argument("--out", required=True, help="output folder or fsspec URL such as s3://bucket/run "
                     "(shards/ + manifest.json)")
    gen.add_argument("--task", metavar="K/N", help="make only independent task K of N (shards k with "
                     "k %% N == K; no rendezvous), e.g. a SLURM array or Kubernetes Indexed Job index; "
                     "then `synthgen finalize OUT`")
    gen.add_argument("--num-samples", type=int, help="override num_samples")
    gen.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 8),
                     help="worker processes (default: CPU count, max 8)")
    gen.add_argument("--loader-workers", type=int, default=None,
                     help="controlnet backend: processes running the CPU stages ahead of the GPU "
                          "(default: --workers)")
    gen.add_argument("--engine", choices=["local", "ray"], default="local",
                     help="local: this machine's processes, ranks or --task (default); ray: a Ray "
                          "cluster balances the shards (same bytes)")
    gen.add_argument("--ray-address", default=None,
                     help="--engine ray: the cluster to join (default $RAY_ADDRESS; without either, a "
                          "local Ray is started for the run)")
    gen.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    fin = sub.add_parser("finalize", help="check that every shard of a --task run is there and write "
                         "its manifest (exit 1, naming the missing shards, if not)")
    fin.add_argument("out", help="the --out folder or URL of the tasks")

    val = sub.add_parser("validate", help="check a recipe and print the resolved one")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*")

    prev = sub.add_parser("preview", help="contact sheet of a few samples")
    prev.add_argument("recipe")
    prev.add_argument("overrides", nargs="*")
    prev.add_argument("--out", required=True, help="PNG/JPG file to write")
    prev.add_argument("-n", type=int, default=8, help="number of samples (default 8)")
    prev.add_argument("--start", type=int, default=0, help="first sample index")

    stat = sub.add_parser("status", help="progress of a run folder: done/total, rate, rejects")
    stat.add_argument("out", help="the --out folder or URL of a run")

    rep = sub.add_parser("report", help="write an HTML report of a run folder")
    rep.add_argument("out", help="the --out folder or URL of a run")
    rep.add_argument("--html", help="report file (default OUT/report.html)")
    rep.add_argument("--max-samples", type=int, default=500, help="samples read for the histograms")

    ada = sub.add_parser("adapt", help="closed loop: probe a regressor, weight the recipe where it fails "
                         "(and where unlabelled target images lie), write the next recipe")
    ada.add_argument("recipe", help="base recipe YAML")
    ada.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the base recipe")
    ada.add_argument("--out", required=True, help="folder: round-R/ (recipe, probe shards), adapt.json, recipe.yaml")
    ada.add_argument("--regressor", required=True, help="FILE.py:FUNCTION or module:FUNCTION returning a "
                     "regressor (synthgen.adapt.Regressor), e.g. examples/adapt_regressor.py:load_keypointnet")
    ada.add_argument("--checkpoint", help="passed to the regressor factory")
    ada.add_argument("--target", help="unlabelled target person crops: a folder of images or tar shards "
                     "(only image members are read)")
    ada.add_argument("--rounds", type=int, default=3)
    ada.add_argument("--probe", type=int, default=96, help="probe samples per round")
    ada.add_argument("--bins", type=int, default=8, help="bins per continuous attribute")
    ada.add_argument("--mix", type=float, default=0.5, help="weight of the base distribution in the next recipe")
    ada.add_argument("--floor", type=float, default=0.02, help="least probability of any bin")
    ada.add_argument("--attributes", nargs="+", help="attributes to adapt (default: age, elevation, fov, "
                     "subject fraction, pose class)")
    ada.add_argument("--seed", type=int, default=0, help="seed of the rounds' probe recipes")
    ada.add_argument("--estimator", default="classify", choices=["classify", "importance"],
                     help="target estimate: classify (bin classifiers taught on labelled synthetic samples, "
                     "label-shift) or importance (probe-vs-target covariate-shift weights)")
    ada.add_argument("--reference", nargs="+", default=[], help="labelled synthetic runs (e.g. the regressor's "
                     "training run) that also teach the classify estimate")
    ada.add_argument("--unskilled", default="base", choices=["base", "estimate"],
                     help="an attribute whose bins the images cannot tell apart (classify skill below 0.15): "
                     "focus on the base x error (base) or on the estimate's plain mean anyway (estimate)")
    ada.add_argument("--start", default="estimate", choices=["estimate", "base"],
                     help="round 0's recipe: target-weighted by the estimate taught on --reference (estimate; "
                     "needs --target and --reference, else the base) or the base distribution (base)")
    ada.add_argument("--workers", type=int, default=1)

    exp = sub.add_parser("export", help="write a run as COCO person keypoints or BEDLAM labels")
    exp.add_argument("format", choices=["coco", "bedlam"], help="coco: images + person_keypoints.json; "
                     "bedlam: images + one npz per shard (SMPL / SMPL-X runs)")
    exp.add_argument("run", help="the --out folder or URL of a run")
    exp.add_argument("--out", required=True, help="export folder (images/, annotations/ or labels/)")
    exp.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def _load(args) -> "Recipe":  # noqa: F821
    from synthgen.recipe import load_recipe

    overrides = list(args.overrides)
    if getattr(args, "num_samples", None) is not None:
        overrides.append(f"num_samples={args.num_samples}")
    return load_recipe(args.recipe, overrides)


def _cmd_validate(args) -> int:
    from synthgen.recipe import recipe_hash

    recipe = _load(args)
    sys.stdout.write(f"# recipe hash {recipe_hash(recipe)}\n")
    sys.stdout.write(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    if recipe.backend.kind == "controlnet" and recipe.sequence is None:
        from synthgen.images import control_plan

        config = recipe.backend.controlnet
        resolved = {"family": config.family, "image": [recipe.image.width, recipe.image.height],
                    "vae": config.vae or "the base model's", "scheduler": config.scheduler,
                    "eta": config.eta, "steps": config.steps, "guidance": config.guidance,
                    "long_prompts": config.long_prompts, "controlnets": control_plan(recipe)}
        sys.stdout.write("# what each ControlNet receives (resolved):\n")
        sys.stdout.write("".join(f"# {line}\n" for line in
                                 yaml.safe_dump(resolved, sort_keys=False).splitlines()))
    return 0


def _cmd_generate(args) -> int:
    from synthgen.engine.memory import keep_freed_memory
    from synthgen.engine.run_folder import parse_part
    from synthgen.run import generate

    recipe = _load(args)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    task = parse_part(args.task) if args.task is not None else None
    keep_freed_memory()  # this process makes samples itself with --workers 1 (and as a rank)
    manifest = generate(recipe, args.out, workers=args.workers, progress=not args.no_progress,
                        loader_workers=args.loader_workers, task=task, engine=args.engine,
                        ray_address=args.ray_address)
    stats = manifest.get("stats", {})
    if "rank" in manifest:
        log.info("rank %d done (%.1f samples/s)", manifest["rank"], stats.get("last_run_samples_per_second") or 0)
        return 0
    if task is not None:
        log.info("task %d/%d done (%.1f samples/s); once every task is done: synthgen finalize %s",
                 task[0], task[1], stats.get("last_run_samples_per_second") or 0.0, args.out)
        return 0
    log.info("wrote %d/%d samples in %d shards to %s (%.1f samples/s this run)",
             manifest["num_samples_written"], manifest["num_samples"], len(manifest["shards"]),
             args.out, stats.get("last_run_samples_per_second") or 0.0)
    return 0


def _check_image_out(out: str) -> None:
    """Refuse a preview ``--out`` that cannot be written as an image, before any sample is made."""
    import cv2

    from synthgen.engine.run_folder import check_writable_folder

    if Path(out).is_dir() or not cv2.haveImageWriter(out):
        raise UserError(f"--out {out}: not an image file name; pass a .png or .jpg path, e.g. preview.png")
    check_writable_folder(Path(out).parent, f"--out {out}: its folder",
                          "pass a .png or .jpg path in a folder you can write to")


def _cmd_preview(args) -> int:
    _check_image_out(args.out)
    from synthgen.engine import finished_samples
    from synthgen.preview import contact_sheet, save_rgb
    from synthgen.run import build_factory

    recipe = _load(args)
    if args.n < 1:
        raise UserError(f"-n must be at least 1, got {args.n}")
    samples = list(finished_samples(build_factory(recipe), list(range(args.start, args.start + args.n))))
    save_rgb(args.out, contact_sheet(samples))
    log.info("contact sheet of %d samples written to %s", len(samples), args.out)
    return 0


def _cmd_finalize(args) -> int:
    from synthgen.engine.launch import finalize

    manifest, missing = finalize(args.out)
    if missing:
        listed = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        sys.stderr.write(f"synthgen: incomplete: {len(missing)} of {len(missing) + len(manifest['shards'])} "
                         f"shards missing: {listed}; rerun those tasks (same command and --task), then "
                         f"finalize again\n")
        return 1
    log.info("complete: %d samples in %d shards; manifest written to %s", manifest["num_samples_written"],
             len(manifest["shards"]), args.out)
    return 0


def _cmd_status(args) -> int:
    from synthgen.report import format_status, run_status

    sys.stdout.write(format_status(run_status(args.out)) + "\n")
    return 0


def _cmd_report(args) -> int:
    from synthgen.report import write_report

    path = write_report(args.out, args.html, max_samples=args.max_samples)
    log.info("report written to %s", path)
    return 0


def _cmd_export(args) -> int:
    from synthgen.export import export_bedlam, export_coco

    run = {"coco": export_coco, "bedlam": export_bedlam}[args.format]
    run(args.run, args.out, progress=not args.no_progress)
    return 0


def _cmd_adapt(args) -> int:
    import json

    from synthgen.adapt import ATTRIBUTES, AdaptConfig, adapt, load_regressor

    recipe = _load(args)
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    config = AdaptConfig(attributes=list(args.attributes or ATTRIBUTES), bins=args.bins, rounds=args.rounds,
                         probe=args.probe, mix=args.mix, floor=args.floor, seed=args.seed, estimator=args.estimator,
                         start=args.start, unskilled=args.unskilled)
    config.check(recipe)  # before the regressor is loaded
    for run in args.reference:
        if not Path(run).is_dir():
            raise UserError(f"--reference {run}: no such run folder; give the --out folder of a synthgen run")
    manifest = adapt(recipe, load_regressor(args.regressor, args.checkpoint), args.out, config,
                     target=args.target, workers=args.workers, reference=args.reference)
    log.info("%d rounds; probe PCK %s; next recipe %s/recipe.yaml, record %s/adapt.json", len(manifest["rounds"]),
             [r["probe_pck"] for r in manifest["rounds"]], args.out, args.out)
    sys.stdout.write(json.dumps({"final_weights": manifest["final_weights"],
                                 "recipe": str(Path(args.out) / "recipe.yaml")}) + "\n")
    return 0


def _after_stop(code: int) -> int:
    from synthgen.engine.launch import exit_status_after_stop

    return exit_status_after_stop(code)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    for item in extra:  # overrides may come after options: generate R --out D a.b=1
        if item.startswith("-") or "=" not in item:
            parser.error(f"unrecognized argument {item!r}")
    args.overrides = list(getattr(args, "overrides", [])) + extra
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("botocore", "aiobotocore", "s3fs"):  # object-storage clients: their warnings only
        logging.getLogger(chatty).setLevel(logging.DEBUG if args.verbose else logging.WARNING)
    commands = {"generate": _cmd_generate, "finalize": _cmd_finalize, "validate": _cmd_validate, "preview": _cmd_preview,
                "status": _cmd_status, "report": _cmd_report, "export": _cmd_export,
                "adapt": _cmd_adapt}
    try:
        return commands[args.command](args)
    except UserError as exc:
        sys.stderr.write(f"synthgen: error: {exc}\n")
        return 2
    except (ErrorBudgetExceeded, StorageError, WorkLost) as exc:
        sys.stderr.write(f"synthgen: stopped: {exc}\n")
        return _after_stop(1)
    except Interrupted as exc:
        sys.stderr.write(f"synthgen: {exc}\n")
        return _after_stop(128 + exc.signum)
    except KeyboardInterrupt:
        sys.stderr.write("synthgen: interrupted; complete shards are kept, rerun the same command to resume\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
