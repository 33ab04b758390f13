"""Medians over the repeats of a side-by-side benchmark run, for the bench/run_*_bench.sh scripts:
WORK/torch-R.json (the baseline's rates, a flat JSON object) and WORK/ours-R.json (Google Benchmark's JSON
output), R = 1..repeats."""
import json
import statistics


def median_rates(work, repeats):
    """(ours, theirs): each {name: median rate}; ours by benchmark name (up to its first '/'), items/s."""
    theirs = [json.load(open(f"{work}/torch-{r}.json")) for r in range(1, repeats + 1)]
    ours = [{b["name"].split("/")[0]: b["items_per_second"] for b in json.load(open(f"{work}/ours-{r}.json"))["benchmarks"]}
            for r in range(1, repeats + 1)]

    def medians(runs):
        return {k: statistics.median(run[k] for run in runs) for k, v in runs[0].items() if isinstance(v, (int, float))}

    return medians(ours), medians(theirs)
