"""The launch arguments of Megatron scripts, read without running them (moejax/tools/shell_script.py):
arrays, defaults, arithmetic, conditions, multi-line strings, here-documents and launches inside strings."""
import pytest

from moejax.tools.shell_script import read_launch


def test_arrays_defaults_and_arithmetic():
  script = """#!/bin/bash
N=${NODES:-"2"}
WORLD=$((8*$N))
A=(
  --num-layers 4   # four
  --hidden-size ${H:-64}
)
A=("${A[@]}" --seq-length 16)
A+=(--lr 1e-4)
declare -a B=(--tensor-model-parallel-size 2)
torchrun --nproc $WORLD train/pretrain_gpt.py \\
   ${A[@]} \\
   ${B[@]} --data-path $1
"""
  assert read_launch(script) == (["--num-layers", "4", "--hidden-size", "64", "--seq-length", "16", "--lr", "1e-4",
                                  "--tensor-model-parallel-size", "2", "--data-path", "$1"], [])


def test_conditions_pick_the_branch_the_script_would_run():
  script = """
TP=${TP:-2}
FSDP=${FSDP:-1}
MODE=${MODE:-"fast"}
if [ "${FSDP}" = 1 ]; then
  ARGS=(--fsdp)
elif [ "$TP" -gt 1 ]; then
  ARGS=(--tp-only)
else
  ARGS=(--neither)
fi
if [[ -z "$UNSET" && $MODE == f* ]]
then
  ARGS+=(--unset-and-fast)
  if ! [ "$TP" -ne 2 ] || [ -n "" ]; then ARGS+=(--tp-is-2); fi
fi
if [ "$MODE" != "fast" ]; then
  ARGS+=(--slow)
  python never.py
fi
if test "$TP" -lt 2 -o "$FSDP" = 0; then ARGS+=(--no); else ARGS+=(--else-on-one-line); fi
python pretrain_gpt.py ${ARGS[@]}
"""
  assert read_launch(script).arguments == ["--fsdp", "--unset-and-fast", "--tp-is-2", "--else-on-one-line"]
  assert read_launch("FSDP=0\n" + script.replace("FSDP=${FSDP:-1}", "")).arguments[0] == "--tp-only"


def test_a_condition_it_cannot_evaluate_takes_its_branch_and_says_so():
  launch = read_launch("""
if [ -f /etc/cluster.env ]; then ARGS=(--on-cluster); fi
if command -v nvidia-smi >/dev/null; then ARGS+=(--gpu); fi
python pretrain_gpt.py ${ARGS[@]}
""")
  assert launch.arguments == ["--on-cluster", "--gpu"]
  assert [cmd for cmd, _ in launch.assumptions] == ["if [ -f /etc/cluster.env ]", "if command -v nvidia-smi >/dev/null"]
  assert all(why == "condition not evaluated: its branch taken" for _, why in launch.assumptions)


def test_launch_inside_a_multiline_string_run_by_srun_in_a_heredoc():
  script = """
PROFILE=${PROFILE:-0}
ARGS=(--num-layers 2 --moe-layer-freq [0]*1+[1]*1)
if [ "${PROFILE}" = 1 ]; then
    PROFILE_CMD="nsys profile \\
        -o out"
    ARGS=("${ARGS[@]}" --profile)
else
    PROFILE_CMD=""
fi
echo "will run pretrain_gpt.py"
CMD="
cd /megatron;  # don't run: this apostrophe is in a comment
export PYTHONPATH=/megatron:${PYTHONPATH};
${PROFILE_CMD} python /megatron/pretrain_gpt.py ${ARGS[@]}"
sbatch <<EOF
#!/bin/bash
#SBATCH --nodes=2
srun \\
    --mpi=pmix \\
    bash -x -c "${CMD}" 2>&1 | tee log.txt
EOF
"""
  assert read_launch(script) == (["--num-layers", "2", "--moe-layer-freq", "[0]*1+[1]*1"], [])
  assert read_launch("CMD='torchrun pretrain_gpt.py --lr 1'\neval $CMD\n").arguments == ["--lr", "1"]
  assert read_launch("B=$((1<<20))\n3\npython pretrain_gpt.py --bucket $B\n").arguments == ["--bucket", "$((1<<20))"]


def test_no_launch_names_the_variables_that_hold_arguments():
  with pytest.raises(ValueError, match="no command of the script runs a .py file"):
    read_launch("echo hi\n")
  conf = 'MODEL_ARGS=" \\\n    --num-layers 48 \\\n    --hidden-size 2048 \\\n"\n'
  with pytest.raises(ValueError, match=r"it holds arguments in \$MODEL_ARGS: pass them after -- "
                                       r"\(-- \$\(source SCRIPT; echo \$MODEL_ARGS\)\)"):
    read_launch(conf)
