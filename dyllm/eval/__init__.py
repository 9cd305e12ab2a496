"""dyllm as a model of EleutherAI's lm-evaluation-harness (the optional `eval` extra).

    pip install 'dyllm[eval]'
    ARGS=pretrained=/models/LLaDA-8B-Instruct,policy=dyllm,tau=0.99,device=cuda,dtype=bfloat16
    ARGS=$ARGS,gen_length=256,steps=256,block_length=8,batch_size=16
    python -m dyllm.eval --model dyllm --model_args $ARGS --tasks gsm8k --num_fewshot 5

`python -m dyllm.eval` is lm-eval's own command line with the `dyllm` model registered first;
`import dyllm.eval.lm_eval_adapter` registers it inside a Python session. Only `generate_until`
is served: a masked diffusion LM has no left-to-right likelihood. The command line refuses a
task of another kind, a bad model argument and a bad generation option before any generation,
with one line on stderr (exit status 2). lm_eval is imported only by the adapter and the command
line, so `import dyllm` never needs it.
"""

from __future__ import annotations


class EvalUsageError(ValueError):
    """A model argument, generation option or task dyllm cannot run; the message says the fix.

    `python -m dyllm.eval` prints it as one line and exits with status 2.
    """
