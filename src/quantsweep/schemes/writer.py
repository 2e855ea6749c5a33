"""Write schemes as the files users hand to tools: JSON per scheme, exclusion lists, a Markdown table."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantsweep.core.records import write_json, write_text_atomic
from quantsweep.schemes.scheme_records import Policy, Scheme

SCHEME_KIND = "scheme"
INDEX_KIND = "schemes_index"


def scheme_filename(scheme: Scheme) -> str:
    """``scheme_k5.json`` for top-K, ``scheme_random_k5.json`` and so on for the others."""
    return f"scheme_{scheme.name}.json"


def write_schemes(
    run_dir: Path, schemes: Sequence[Scheme], *, context: dict[str, Any], top_n: int = 20
) -> None:
    """Write every scheme, its ``nodes_to_exclude`` list, ``candidates.md`` and ``schemes_index.json``."""
    for scheme in schemes:
        write_json(run_dir / scheme_filename(scheme), SCHEME_KIND, scheme.to_dict())
        write_text_atomic(
            run_dir / f"nodes_to_exclude_{scheme.name}.txt",
            "".join(f"{node}\n" for node in scheme.nodes_to_exclude),
        )
    rows = [
        {
            "name": s.name,
            "policy": s.policy.value,
            "kept": len(s.kept_layers),
            "avg_weight_bits": s.avg_weight_bits,
            "precision_counts": s.precision_counts(),
            "file": scheme_filename(s),
        }
        for s in schemes
    ]
    write_json(run_dir / "schemes_index.json", INDEX_KIND, {**context, "schemes": rows})
    write_text_atomic(run_dir / "candidates.md", _markdown(schemes, context=context, top_n=top_n))


def _markdown(schemes: Sequence[Scheme], *, context: dict[str, Any], top_n: int) -> str:
    ranked = sorted((a for a in schemes[0].layers if a.rank is not None), key=lambda a: a.rank)
    lines = [
        f"# Candidate schemes from `{context['combination']}`",
        "",
        f"Low precision `{context['low']}`, kept layers at `{context['high']}`.",
        f"Report: `{context['report']}`.",
        "",
        "| scheme | policy | kept | avg weight bits | layers per precision |",
        "|---|---|---|---|---|",
    ]
    for s in schemes:
        counts = ", ".join(f"{k}: {v}" for k, v in s.precision_counts().items())
        lines.append(
            f"| `{s.name}` | {s.policy.value} | {len(s.kept_layers)} | {s.avg_weight_bits:.2f} | {counts} |"
        )
    lines += [
        "",
        f"## Top {top_n} layers",
        "",
        "| rank | Torch layer | sensitivity | ONNX node |",
        "|---|---|---|---|",
    ]
    for a in ranked[:top_n]:
        lines.append(f"| {a.rank} | `{a.torch_name}` | {a.sensitivity:.4g} | `{a.onnx_node}` |")
    top = [s for s in schemes if s.policy is Policy.TOP_K]
    if top:
        lines += ["", "Kept layers per top-K scheme:", ""]
        lines += [f"- `{s.name}`: {', '.join(f'`{n}`' for n in s.kept_layers) or '(none)'}" for s in top]
    return "\n".join(lines) + "\n"
