#!/usr/bin/env bash
# One entry point for a fresh machine with Python 3.10-3.13 and access to PyPI.
#
#   ./kit.sh report [EXPERIMENT.yaml ...] [--scale quick|full] [--data-root DIR]
#       set up .venv, then write a report (default: the CT assignment, quick scale, embedded data)
#   ./kit.sh test [PYTEST ARGS ...]
#       set up .venv, then run the whole test suite: unit tests and every notebook (pytest --nbval),
#       in two worker processes (pytest-xdist)
#   ./kit.sh student OUT_DIR [--overwrite]
#       write the student edition of every lesson (no cells tagged answer, no outputs) into OUT_DIR
#   ./kit.sh setup
#       only set up .venv (then: .venv/bin/jupyter lab notebooks/)
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")"
KIT_DIR=$PWD

PYTHON=${PYTHON:-python3}
VENV=.venv

setup() {
    if [[ ! -x $VENV/bin/python ]]; then
        echo "Creating $VENV with $($PYTHON --version)"
        "$PYTHON" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed since the last successful install.
    local stamp=$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)
    if [[ ! -f $stamp ]]; then
        echo "Installing lunghelpers and its dependencies into $VENV (TensorFlow: about 1-2 minutes)"
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e '.[dev]'
        rm -f "$VENV"/.installed-* && touch "$stamp"
    fi
}

command=${1:-help}
shift || true
case $command in
    setup)
        setup
        echo "Ready. Open the notebooks with: $VENV/bin/jupyter lab notebooks/"
        ;;
    report)
        setup
        if [[ $# -eq 0 || $1 == --* ]]; then
            set -- experiments/ct_assignment.yaml "$@"
        fi
        exec "$VENV/bin/python" -m lunghelpers.report "$@"
        ;;
    test)
        setup
        # Two workers, each taking whole files (a notebook's cells run in order in one kernel);
        # `-n 0` after the command runs everything in one process.
        exec "$VENV/bin/python" -m pytest --nbval -n 2 --dist loadfile tests notebooks "$@"
        ;;
    student)
        setup
        cd "$CALLER_DIR"  # OUT_DIR is relative to where the command was typed
        exec "$KIT_DIR/$VENV/bin/python" -m lunghelpers.student "$@"
        ;;
    *)
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        [[ $command == help ]] || exit 2
        ;;
esac
