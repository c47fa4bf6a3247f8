"""Evaluation results as JSON-able summaries (percent) and a markdown table."""

REPORT_RANKS = (1, 5, 10)


def summarize(results: dict) -> dict:
    """JSON-able summary of `evaluate_features` results: for each of "original" / "re_ranked",
    {"rank1", "rank5", "rank10", "mAP", "mINP"} in percent and the query counts."""
    summary = {}
    for name, metrics in results.items():
        cmc = metrics["cmc"]
        row = {f"rank{r}": 100.0 * float(cmc[min(r, len(cmc)) - 1]) for r in REPORT_RANKS}
        row["mAP"] = 100.0 * metrics["mAP"]
        row["mINP"] = 100.0 * metrics["mINP"]
        row["num_valid_queries"] = int(metrics["num_valid_queries"])
        row["num_skipped_queries"] = int(metrics["num_skipped_queries"])
        summary[name] = row
    return summary


def flat_summary(results: dict) -> dict[str, float]:
    """{"rank1", "mAP", ...} (percent) of the original ranking, "rerank_*" of the re-ranked one:
    the scalars a train run logs."""
    flat = {}
    for name, row in summarize(results).items():
        prefix = "" if name == "original" else "rerank_"
        flat.update({f"{prefix}{k}": float(v) for k, v in row.items()
                     if not k.startswith("num_")})
    return flat


def format_report(results: dict) -> str:
    """A markdown table of rank-1/5/10, mAP and mINP (percent), one row per setting."""
    summary = summarize(results)
    columns = [f"rank{r}" for r in REPORT_RANKS] + ["mAP", "mINP"]
    lines = ["| setting | " + " | ".join(c.replace("rank", "rank-") for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for name, row in summary.items():
        lines.append(f"| {name.replace('_', '-')} | "
                     + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    skipped = {row["num_skipped_queries"] for row in summary.values()}
    if skipped != {0}:
        lines.append(f"({max(skipped)} queries without a true match in another camera skipped)")
    return "\n".join(lines)
