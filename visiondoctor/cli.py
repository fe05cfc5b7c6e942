"""The command line: arguments only. Each command calls one function of a package below."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table

import visiondoctor.early_exit  # noqa: F401 - importing a feature registers its task and report sections
import visiondoctor.incremental  # noqa: F401
import visiondoctor.text_query  # noqa: F401
from visiondoctor import __version__, api
from visiondoctor.api import build_config
from visiondoctor.config import Config, ConfigError, load_config
from visiondoctor.data.samples import DataError
from visiondoctor.data.synth import generate
from visiondoctor.data.validate import (
    convert,
    convert_to_yolo,
    format_dataset_report,
    validate_dataset,
)
from visiondoctor.doctor.zoo import ZOO, evaluate_case
from visiondoctor.early_exit.analysis import calibrate_and_analyse
from visiondoctor.engine import distributed, progress
from visiondoctor.engine.checkpoint import CheckpointError
from visiondoctor.incremental.task import IncrementalOptions, run_phases
from visiondoctor.models.detection import WeightsUnavailable
from visiondoctor.models.registry import available_models, get_entry
from visiondoctor.presets import preset_path
from visiondoctor.report.compare import (
    Comparison,
    ComparisonError,
    compare_runs,
    difference_rows,
    interval_rows,
)
from visiondoctor.rundir import RunDir
from visiondoctor.safety import forbid_unpickling
from visiondoctor.tasks import pipeline
from visiondoctor.tasks.anomaly import run_anomaly
from visiondoctor.tasks.export import ExportError, export_run
from visiondoctor.tasks.speed import measure_run
from visiondoctor.tasks.video import predict_media
from visiondoctor.text_query.inference import query

console = Console(stderr=True)

# Exceptions that are the user's input, not our bug: printed as a message, exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError, ConfigError, ComparisonError, ExportError, CheckpointError, WeightsUnavailable, FileNotFoundError,
    ValueError, KeyError,
)

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(name: str) -> Callable:
    def wrap(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = fn
        return fn

    return wrap


def _config(args: argparse.Namespace) -> Config:
    flags = ("task", "data", "format", "model", "name", "epochs", "batch_size", "image_size", "max_minutes", "device",
             "synth", "output_dir")
    overrides = list(args.set or [])
    if getattr(args, "pretrained", None) is not None:  # --pretrained / --no-pretrained: the whole model's and the backbone's
        overrides[:0] = [f"model.pretrained={args.pretrained}", f"model.pretrained_backbone={args.pretrained}"]
    if getattr(args, "weights", None):
        overrides.insert(0, f"model.weights={args.weights}")
    return build_config(args.config, overrides, **{flag: getattr(args, flag, None) for flag in flags})


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    cfg = load_config(preset_path("demo_quick" if args.quick else "demo"), list(args.set or []))
    if args.output_dir:
        cfg.output_dir = args.output_dir
    run = pipeline.train(pipeline.task_for(cfg), cfg)
    _print_summary(run)
    return 0


@command("train")
def cmd_train(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if args.phases:
        options = IncrementalOptions(memory_per_class=args.memory_per_class, phase_steps=args.phase_steps,
                                     reuse_base=args.reuse_base or "")
        results = run_phases(cfg, None if args.phases == "auto" else args.phases, args.method, options,
                             exist_ok=args.exist_ok)
        print(f"report: {Path(results['run_dir']) / 'report.html'}")
        return 0
    options = {k: v for k, v in (("loss_file", args.loss_file), ("anomaly_class", args.anomaly_class)) if v is not None}
    task = pipeline.task_for(cfg)
    if options and not set(options) <= set(task.option_names()):
        raise ValueError("--loss-file and --anomaly-class apply to --task segmentation")
    run = pipeline.train(pipeline.task_for(cfg, **options), cfg, resume=args.resume, exist_ok=args.exist_ok)
    _print_summary(run)
    return 0


@command("eval")
def cmd_eval(args: argparse.Namespace) -> int:
    if args.max_map_drop is not None or args.target_latency_ms is not None:
        args.early_exit = True
    if args.early_exit:
        if args.data is not None:
            raise ValueError("--data applies to a plain evaluation, not to the early-exit calibration")
        result = calibrate_and_analyse(args.run, max_map_drop=args.max_map_drop,
                                       target_latency_ms=args.target_latency_ms, split=args.split,
                                       latency_images=args.latency_images, device=args.device)
        _print_early_exit(result)
    else:
        metrics = pipeline.evaluate_run(args.run, split=args.split, max_images=args.max_images, data_path=args.data,
                                        device=args.device, batch_size=args.batch_size)
        _print_metrics(metrics)
    console.print(f"report: {Path(args.run) / 'report.html'}")
    return 0


def _print_early_exit(result: dict) -> None:
    point, held = result["operating_point"], result.get("held_out") or {}
    table = Table("", f"calibration ({result['calibration_split']})",
                  f"held out ({result.get('held_out_split') or '-'})")
    for key, label in (("map", "mAP"), ("map_drop", "mAP lost vs full"), ("latency_ms", "mean latency (ms, predicted)"),
                       ("latency_cut", "latency cut vs full")):
        table.add_row(label, *(f"{v:.4f}" if isinstance(v, (int, float)) else "-"
                               for v in (point.get(key), held.get(key))))
    table.add_row("images per exit", *(" / ".join(f"{share:.0%}" for share in d) if d else "-"
                                        for d in (point.get("distribution"), held.get("distribution"))))
    console.print(table)
    console.print(f"signal {result['policy']['signal']}, thresholds {result['policy']['thresholds']}"
                  f"{'' if point.get('budget_met', True) else ' (the budget could not be met: closest point)'}")


@command("query")
def cmd_query(args: argparse.Namespace) -> int:
    detections = query(args.run, args.image, args.queries, score_threshold=args.threshold)
    print(json.dumps(detections, indent=1))
    return 0


@command("predict")
def cmd_predict(args: argparse.Namespace) -> int:
    outputs = predict_media(args.run, args.input, args.out, threshold=args.threshold, runtime=args.runtime,
                            batch_size=args.batch_size, device=args.device)
    for out in outputs:
        console.print(f"predictions written to {out}")
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    console.print(f"exported: {export_run(args.run, args.format, args.out, opset=args.opset, device=args.device)}")
    return 0


@command("speed")
def cmd_speed(args: argparse.Namespace) -> int:
    console.print(f"latency written to {measure_run(args.run, runs=args.runs, threads=args.threads, device=args.device)}")
    return 0


@command("report")
def cmd_report(args: argparse.Namespace) -> int:
    console.print(f"report: {pipeline.build_report(RunDir.open(args.run))}")
    return 0


@command("diagnose")
def cmd_diagnose(args: argparse.Namespace) -> int:
    if args.run:  # a run directory: its resolved config is the starting point
        args.config = str(Path(args.run) / "config.yaml")
    findings = api.diagnose(args.model_file, config=args.config, overrides=args.set or (), loss=args.loss_file,
                            steps=args.steps or 100, out=args.out, device=args.device or "auto")
    _print_findings([f.to_dict() for f in findings])
    return 0


@command("zoo")
def cmd_zoo(args: argparse.Namespace) -> int:
    if args.zoo_command == "list":
        for case in ZOO.values():
            print(f"{case.name:28s} {case.expected_id:32s} {case.bug}")
        return 0
    outcome = evaluate_case(args.name)
    case = outcome.case
    print(f"{case.name}: {case.bug}\n  healthy twin: {case.twin}\n  expected finding: {case.expected_id}")
    print("broken version:")
    _print_findings([f.to_dict() for f in outcome.broken])
    print("healthy twin:")
    _print_findings([f.to_dict() for f in outcome.healthy])
    caught = outcome.detected is not None and not outcome.twin_errors
    print(f"{'caught' if caught else 'NOT caught'} in {outcome.seconds:.1f}s")
    return 0 if caught else 1


@command("anomaly")
def cmd_anomaly(args: argparse.Namespace) -> int:
    result = run_anomaly(args.run, methods=args.methods, anomaly_class=args.anomaly_class, split=args.split,
                         max_images=args.max_images)
    print(f"anomaly scores of {', '.join(result['methods_order'])} on the {result['split']} split: "
          f"{Path(args.run) / 'anomaly.json'}; report: {Path(args.run) / 'report.html'}")
    return 0


@command("compare")
def cmd_compare(args: argparse.Namespace) -> int:
    comparison = compare_runs([Path(r) for r in args.runs], Path(args.out))
    _print_comparison(comparison)
    console.print(f"comparison report: {comparison.path}")
    return 0


def _print_comparison(comparison: Comparison) -> None:
    """Each run's mAP with its interval, then every pair's difference and whether it is significant."""
    if comparison.significance is None:
        console.print(f"no confidence intervals: {comparison.no_significance_reason}", markup=False)
        return
    for columns, rows in (interval_rows(comparison.runs, comparison.significance),
                          difference_rows(comparison.significance)):
        table = Table(*columns)
        for row in rows:
            table.add_row(*(str(c) for c in row))
        console.print(table)
    console.print(comparison.significance.describe(), markup=False)


@command("data")
def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synth":
        kwargs = {"preset": args.preset} if args.preset else {}
        generate(args.kind, args.out, num_images=args.num_train, seed=args.seed, **kwargs)
        console.print(f"{args.kind} dataset written to {args.out}")
        return 0
    if args.data_command == "validate":
        report = validate_dataset(args.path, args.format, args.split, args.task)
        print(format_dataset_report(report))
        return 1 if report.refused else 0  # refused records would be lost: not usable as is
    if args.data_command == "convert" and args.to == "yolo":
        for w in convert_to_yolo(args.path, args.format, args.split, args.out):
            console.print(f"written split {w.split}: {w.images} images, {w.boxes} boxes -> {w.images_dir} "
                          f"(ground truth {w.coco_gt.name})" + (f"; {w.crowd_skipped} crowd boxes left out"
                                                                 if w.crowd_skipped else ""))
        console.print(f"YOLO dataset: {Path(args.out).absolute() / 'data.yaml'}")
        return 0
    if args.data_command == "convert":
        result = convert(args.path, args.format, args.split, args.out)
        console.print(f"written {result.out_path} ({len(result.index.records)} images, {result.index.num_boxes} boxes; "
                      f"file names relative to {result.images_root})")
        return 0
    raise AssertionError(args.data_command)


def _print_metrics(metrics: dict) -> None:
    table = Table("metric", "value")
    for key, value in metrics.items():
        if isinstance(value, (int, float)):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _print_findings(findings: list[dict]) -> None:
    if not findings:
        print("  no findings")
    for f in findings:
        print(f"  [{f['severity']}] {f['id']}: {f['title']}")
        if f["severity"] != "info" and f.get("fix"):
            print(f"      fix: {f['fix']}")


def _print_summary(run: RunDir) -> None:
    if not distributed.is_main():
        return

    metrics_file = run.path / "metrics.json"
    if metrics_file.exists():
        _print_metrics(json.loads(metrics_file.read_text()))
    if run.diagnosis_json.exists():
        findings = json.loads(run.diagnosis_json.read_text())
        errors = [f for f in findings if f.get("severity") == "error"]
        warnings = [f for f in findings if f.get("severity") == "warning"]
        console.print(f"doctor: {len(errors)} error(s), {len(warnings)} warning(s)")
        for f in errors + warnings:
            console.print(f"  [{f['severity']}] {f['id']}: {f['title']}")
    print(f"report: {run.report}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help ends with its default; options left unset (None) say in their help where
    their value comes from instead of "(default: None)"."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help shows every option's default, for every (sub)command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


DEFAULTS = Config()


def _from_config(what: str, key: str, value: Any) -> str:
    """Help of a flag that sets a config key: its value comes from --config, then the flag, then --set."""
    return f"{what} (default: {value}, the config's {key})"


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="visiondoctor",
        description="Train, evaluate and diagnose object detection and segmentation models on your own data.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def device_option(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
        p.add_argument("--device", default=default, help=f"auto (a GPU when there is one), cpu, cuda, cuda:1 ...: {what}")

    def train_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help="YAML config file, or the name of a shipped preset (demo, text_query, ...) "
                                        "(default: none, the built-in defaults)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a config value, e.g. train.lr=0.01 (repeatable; wins over the other flags) "
                            "(default: none)")
        p.add_argument("--task", choices=["detection", "segmentation"],
                       help="the task (default: the model's, as the model registry says)")
        p.add_argument("--data", help="dataset folder or annotation file (COCO, VOC, YOLO, image/mask folders) "
                                      "(default: the config's data.path)")
        p.add_argument("--format", help=_from_config("dataset format", "data.format", DEFAULTS.data.format))
        p.add_argument("--synth", help="train on a generated dataset instead: shapes, streets, sketches (default: none)")
        p.add_argument("--model", help=_from_config("model name (see `visiondoctor models`)", "model.name",
                                                    DEFAULTS.model.name))
        p.add_argument("--name", help=_from_config("run name: the run is written to <output_dir>/<name>", "name",
                                                   DEFAULTS.name))
        p.add_argument("--output-dir", dest="output_dir",
                       help=_from_config("folder of the run directories", "output_dir", DEFAULTS.output_dir))
        p.add_argument("--epochs", type=int, help=_from_config("training epochs", "train.epochs", DEFAULTS.train.epochs))
        p.add_argument("--batch-size", dest="batch_size", type=int,
                       help=_from_config("images per step, all processes together (auto: 8 on CPU, 16 on a GPU)",
                                         "train.batch_size",
                                         DEFAULTS.train.batch_size))
        p.add_argument("--image-size", dest="image_size", type=int,
                       help=_from_config("model input size in pixels", "model.image_size", DEFAULTS.model.image_size))
        p.add_argument("--max-minutes", dest="max_minutes", type=float,
                       help=_from_config("wall-clock training budget, 0 = none", "train.max_minutes",
                                         DEFAULTS.train.max_minutes))
        p.add_argument("--device", help=_from_config("auto (a GPU when there is one), cpu, cuda, cuda:1 ...",
                                                     "train.device", DEFAULTS.train.device))
        p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                       help="start from the best pretrained weights that exist (COCO, else ImageNet backbone) or from "
                            "scratch (--no-pretrained) (default: --pretrained, as model.pretrained)")
        p.add_argument("--weights", help="start from a local weights file (a state dict or a run's checkpoint) (default: none)")

    p = sub.add_parser("demo", help="synthesize shapes, train, evaluate, diagnose and write the report")
    p.add_argument("--quick", action="store_true", help="a small smoke-test version (under 2 minutes)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of the demo's config (repeatable) (default: none)")
    p.add_argument("--output-dir", dest="output_dir", help="folder of the run directory (default: runs)")

    p = sub.add_parser("train", help="train a model (writes runs/<name>/)",
                       description="Train, evaluate, diagnose and write the report. The config comes from --config "
                                   "(or the defaults), then the flags, then --set (the last wins).")
    train_options(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last valid checkpoint")
    p.add_argument("--exist-ok", dest="exist_ok", action="store_true",
                   help="write into <output_dir>/<name> even if it exists (default: a new <name>-2, <name>-3, ...)")
    p.add_argument("--phases", default=None,
                   help="class-incremental training: phases.json, or auto (the dataset's) (default: off)")
    p.add_argument("--method", default="replay+distill", choices=["replay+distill", "replay", "distill", "finetune"],
                   help="class-incremental method")
    p.add_argument("--memory-per-class", dest="memory_per_class", type=int, default=3,
                   help="class-incremental: images replayed per old class")
    p.add_argument("--phase-steps", dest="phase_steps", type=int, default=200, help="class-incremental: steps per phase")
    p.add_argument("--reuse-base", dest="reuse_base", default=None,
                   help="class-incremental: a run whose phase 0 to reuse (default: train it)")
    p.add_argument("--loss-file", dest="loss_file",
                   help="segmentation: path.py:fn(outputs, targets) -> loss (default: cross-entropy, + 0.4 x aux)")
    p.add_argument("--anomaly-class", dest="anomaly_class", type=int, default=None,
                   help="segmentation: a known class held out as the anomaly, never trained on (default: none)")

    p = sub.add_parser("eval", help="evaluate a run on a split (the whole split by default)")
    p.add_argument("run", help="a run directory (runs/<name>)")
    p.add_argument("--split", default="val", help="the split to evaluate: train, val or test")
    p.add_argument("--data", default=None,
                   help="evaluate on this dataset instead of the run's own; it must have the run's classes, in the "
                        "same order (default: the run's dataset)")
    p.add_argument("--max-images", dest="max_images", type=int, default=0,
                   help="evaluate a random subset of this many images, 0 = all (the report says so and gives the "
                        "sample size)")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None,
                   help="images per forward pass (default: the run's train.batch_size)")
    device_option(p, "auto", "where the model runs")
    p.add_argument("--early-exit", dest="early_exit", action="store_true",
                   help="early-exit model: calibrate the exit thresholds on --split and analyse speed vs accuracy")
    p.add_argument("--max-map-drop", dest="max_map_drop", type=float, default=None,
                   help="early exit: mAP the exits may lose vs the full model (default: 0.01 = 1 point)")
    p.add_argument("--target-latency-ms", dest="target_latency_ms", type=float, default=None,
                   help="early exit: mean CPU latency per image to reach instead (default: none)")
    p.add_argument("--latency-images", dest="latency_images", type=int, default=30,
                   help="early exit: images timed per path (after warm-up)")

    p = sub.add_parser("query", help="text-query detector: find what free-text queries name in an image")
    p.add_argument("run", help="a text-query run directory")
    p.add_argument("image", help="the image to search")
    p.add_argument("queries", nargs="+", help='e.g. "circle" "disk"')
    p.add_argument("--threshold", type=float, default=0.3, help="lowest score of a detection returned")

    p = sub.add_parser("predict", help="run a trained model on an image, a video, or a folder of them")
    p.add_argument("run", help="a run directory (runs/<name>)")
    p.add_argument("input", help="an image, a video (.mp4 .mov .avi .mkv ...), or a folder")
    p.add_argument("--out", default=None,
                   help="output folder, or the annotated video's path (default: <run>/predict)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="detection: lowest score of a box drawn; segmentation: lowest probability of a pixel's class "
                        "for it to be coloured")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=1,
                   help="images per forward pass (videos: one frame at a time, as a stream)")
    device_option(p, "auto", "where the model runs (the onnxruntime runtime runs on CPU)")
    p.add_argument("--runtime", choices=["pytorch", "onnxruntime"], default="pytorch",
                   help="onnxruntime exports the run to <run>/export/model.onnx first if needed")

    p = sub.add_parser("export", help="export a trained run to ONNX or TorchScript (detection and segmentation)")
    p.add_argument("run", help="a run directory (runs/<name>)")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx", help="the file format")
    p.add_argument("--out", default=None, help="output file or folder (default: <run>/export/model.onnx or model.pt)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    device_option(p, "cpu", "where the model is traced")

    p = sub.add_parser("speed", help="latency per image of a run's model in each runtime (for compare)")
    p.add_argument("run", help="a run directory (runs/<name>)")
    p.add_argument("--runs", type=int, default=20, help="timed images per runtime (after warm-up)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads in every runtime")
    device_option(p, "cpu", "where PyTorch and TorchScript run (ONNX Runtime is timed on CPU only)")

    p = sub.add_parser("report", help="rebuild a run's report.html")
    p.add_argument("run", help="a run directory (runs/<name>)")

    p = sub.add_parser("diagnose", help="static/probe checks, a monitored short training, the overfit-one-batch "
                                        "probe and an evaluation, on your own model or one of ours")
    p.add_argument("run", nargs="?", help="a run directory: diagnose its config's model and data")
    p.add_argument("--model-file", dest="model_file",
                   help="path.py:factory returning an nn.Module (torchvision conventions); executed because you name it"
                        " (default: the config's model.name)")
    p.add_argument("--loss-file", dest="loss_file",
                   help="path.py:fn(outputs, targets) -> loss, for segmentation (default: cross-entropy)")
    p.add_argument("--config", help="YAML config (data, task, model); the same format as train (default: none)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. data.path=path/to/dataset (repeatable) (default: none)")
    p.add_argument("--steps", type=int, default=None, help="steps of the monitored training (default: 100)")
    p.add_argument("--out", default=None,
                   help="folder for diagnosis.json / diagnosis.md (default: <output_dir>/<name>-diagnosis)")
    p.add_argument("--device", default=None,
                   help=_from_config("auto (a GPU when there is one), cpu or cuda", "train.device", DEFAULTS.train.device))

    p = sub.add_parser("zoo", help="the bug zoo: broken models from the seeds and their healthy twins")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="list the cases")
    q = zsub.add_parser("run", help="run one case, broken and healthy")
    q.add_argument("name", help="a case name (see `visiondoctor zoo list`)")

    p = sub.add_parser("anomaly", help="anomaly segmentation scores (MSP, MaxLogit, Energy, SML) and their metrics")
    p.add_argument("run", help="a segmentation run directory")
    p.add_argument("--methods", default="msp,maxlogit,energy,sml", help="comma-separated scoring methods")
    p.add_argument("--anomaly-class", dest="anomaly_class", type=int, default=None,
                   help="the label scored as the anomaly (default: the dataset's, e.g. StreetHazards 13)")
    p.add_argument("--split", default="test", help="the split scored")
    p.add_argument("--max-images", dest="max_images", type=int, default=0, help="score a subset, 0 = all images")

    p = sub.add_parser("compare", help="one report comparing several runs on the same data")
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="runs/comparison.html", help="the comparison report's path")

    p = sub.add_parser("data", help="synthesize, validate or convert datasets")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("synth", help="write a deterministic synthetic dataset")
    q.add_argument("kind", choices=["shapes", "streets", "sketches"], help="the generator")
    q.add_argument("--out", required=True, help="the dataset folder to write")
    q.add_argument("--seed", type=int, default=0, help="random seed (the same seed writes the same dataset)")
    q.add_argument("--num-train", dest="num_train", type=int, default=None,
                   help="training images (default: the generator's own)")
    q.add_argument("--preset", default=None, help="a named size preset of the generator, e.g. quick (default: none)")
    q = dsub.add_parser("validate", help="read a dataset (every split unless --split, and the images they share) "
                                         "and list every problem found; exit 1 when records would be lost")
    q.add_argument("path", help="dataset folder or annotation file")
    q.add_argument("--format", default="auto", help="coco, voc, yolo, ... or auto (detected from the files)")
    q.add_argument("--split", default=None, help="the split to read (default: every split)")
    q.add_argument("--task", choices=["auto", "detection", "segmentation"], default="auto",
                   help="what the dataset is for (auto: the layout found)")
    q = dsub.add_parser("convert", help="convert a dataset to COCO JSON, or to a YOLO folder (every split)")
    q.add_argument("path", help="dataset folder or annotation file")
    q.add_argument("--format", default="auto", help="coco, voc, yolo, ... or auto (detected from the files)")
    q.add_argument("--split", default=None, help="one split (default: COCO the dataset's only or train split; YOLO every split)")
    q.add_argument("--to", default="coco", choices=["coco", "yolo"], help="the target format")
    q.add_argument("--out", required=True, help="COCO: the .json file; YOLO: the folder (images/ labels/ data.yaml)")

    sub.add_parser("models", help="list the registered models")
    return parser


@command("models")
def cmd_models(args: argparse.Namespace) -> int:
    for name in available_models():
        print(f"{name:40s} {get_entry(name).task}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress.setup_logging(args.verbose)  # rich, on the console the progress bars draw on
    try:
        with forbid_unpickling():  # pretrained weights and checkpoints: tensors only, never pickled objects
            return COMMANDS[args.command](args)
    except USER_ERRORS as exc:
        if args.verbose:
            console.print_exception()
        console.print(f"error: {exc}", markup=False, highlight=False, style="bold red")
        return 2
    except KeyboardInterrupt:
        console.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
