"""dyllm as a model of EleutherAI's lm-evaluation-harness (the optional `eval` extra).

    pip install 'dyllm[eval]'
    ARGS=pretrained=/models/LLaDA-8B-Instruct,policy=dyllm,tau=0.99,device=cuda,dtype=bfloat16
    ARGS=$ARGS,gen_length=256,steps=256,block_length=8,batch_size=16
    python -m dyllm.eval --model dyllm --model_args $ARGS --tasks gsm8k --num_fewshot 5

`python -m dyllm.eval` is lm-eval's own command line with the `dyllm` model registered first;
`import dyllm.eval.lm_eval_adapter` registers it inside a Python session. Only `generate_until`
is served: a masked diffusion LM has no left-to-right likelihood, so loglikelihood tasks get an
error saying so. lm_eval is imported here only when the adapter is, so `import dyllm` never
needs it.
"""
