# Sourced by gpu_figures.sh and gpu_study.sh (on the GPU machine, no network):
#   install_carried_wheels      the wheels carried in .whl/ into /tmp/site, on PYTHONPATH (nothing else touched)
#   step NAME SECONDS CMD...    CMD under a time limit, its output in $logs/NAME.log, "NAME: exit RC after S s" in
#                               $out/steps.txt, then the last $tail_lines lines of the log
# They read $py (the interpreter), $out, $logs and $tail_lines from the sourcing script.

install_carried_wheels() {
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
    fi
}

step() {
    local name="$1" limit="$2" start rc
    shift 2
    start=$(date +%s)
    timeout "$limit" "$@" > "$logs/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$out/steps.txt"
    tail -n "$tail_lines" "$logs/$name.log"
}
