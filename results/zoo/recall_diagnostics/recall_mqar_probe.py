"""Synthetic associative-recall probe for TinyGPT (recall diagnostics, 2026-12-04).

Usage: ``[REF=1] [SEED=s] [STD=x] [EMBSTD=x] [NOROPE=1] [UNTIE=1] [EXPLICIT=1] python results/zoo/recall_diagnostics/recall_mqar_probe.py
FMT K M STEPS LR LAYERS`` with FMT ``mqar`` (Zoology MQAR, offset 1: ``B1 C1 .. Bk Ck | Bq Cq ..``) or ``tg`` (the
TinyGrammar format without filler: ``box B key C . .. ? box B key C``), K bindings, M queries. Prints the
accuracy on the query answers every 100 steps. REF=1 swaps TinyGPT for a torch ``nn.TransformerEncoder``
(pre-LN, learned positions) of the same width; the other flags ablate TinyGPT (init std, embedding std,
RoPE -> learned positions, untied head, explicit softmax attention instead of SDPA).
"""
import os, sys, json, time, torch, torch.nn.functional as F
from common.tinylm import grammar as G
from common.tinylm.model import TinyGPT, TinyGPTConfig
from common.tinylm.train import TrainConfig, make_optimizer, lr_at
torch.set_num_threads(1)
V=G.VOCAB; NUM=torch.tensor(V.encode(list(G.NUMBERS))); COL=torch.tensor(V.encode(list(G.COLORS)))
BOX,KEY,DOT,Q=(V.index[w] for w in ("box","key",".","?"))
fmt, k, m, steps, lr, layers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
def batch(n, gen):
    boxes=torch.stack([NUM[torch.randperm(100,generator=gen)[:k]] for _ in range(n)])
    cols=COL[torch.randint(0,12,(n,k),generator=gen)]
    qi=torch.randint(0,k,(n,m),generator=gen)
    qb, qc = boxes.gather(1,qi), cols.gather(1,qi)
    if fmt=="mqar":
        x=torch.cat([torch.stack([boxes,cols],2).view(n,-1), torch.stack([qb,qc],2).view(n,-1)],1)
        ans=torch.zeros_like(x,dtype=torch.bool); ans[:,2*k+1::2]=True
    else:
        c=lambda t,n2: torch.full((n,n2),t)
        b=torch.stack([c(BOX,k),boxes,c(KEY,k),cols,c(DOT,k)],2).view(n,-1)
        q=torch.stack([c(Q,m),c(BOX,m),qb,c(KEY,m),qc],2).view(n,-1)
        x=torch.cat([torch.full((n,1),V.bos_id),b,q],1)
        ans=torch.zeros_like(x,dtype=torch.bool); ans[:,1+5*k+4::5]=True
    return x, ans
SEED=int(os.environ.get('SEED',0)); gen=torch.Generator().manual_seed(SEED); torch.manual_seed(SEED)
x0,_=batch(1,gen)
class Ref(torch.nn.Module):
    def __init__(s_, T):
        super().__init__(); s_.emb=torch.nn.Embedding(V.size,128); s_.pos=torch.nn.Embedding(T,128)
        s_.enc=torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(128,4,512,0.0,batch_first=True,norm_first=True),layers)
        s_.ln=torch.nn.LayerNorm(128); s_.head=torch.nn.Linear(128,V.size,bias=False)
    def forward(s_, x):
        T=x.shape[1]; h=s_.emb(x)+s_.pos(torch.arange(T))
        h=s_.enc(h,mask=torch.nn.Transformer.generate_square_subsequent_mask(T),is_causal=True); return s_.head(s_.ln(h))
import os
model=Ref(x0.shape[1]) if os.environ.get('REF') else TinyGPT(TinyGPTConfig(V.size,d_model=128,n_layers=layers,n_heads=4,context=x0.shape[1]))
if os.environ.get('STD') and not os.environ.get('REF'): model.reset_parameters(std=float(os.environ['STD']))
if os.environ.get('EMBSTD'): torch.nn.init.normal_(model.tok_emb.weight,0,float(os.environ['EMBSTD']))
if os.environ.get('EXPLICIT'):
    import common.tinylm.model as MM0; model.set_softmax_fn(MM0.softmax)
if os.environ.get('NOROPE'):
    import common.tinylm.model as MM
    MM.apply_rope = lambda x, c, s_: x
    class EmbPos(torch.nn.Module):
        def __init__(s_, emb, T):
            super().__init__(); s_.inner=emb; s_.pos=torch.nn.Embedding(T,emb.weight.shape[1]); torch.nn.init.normal_(s_.pos.weight,0,0.02)
        @property
        def weight(s_): return s_.inner.weight
        def forward(s_, idx): return s_.inner(idx)+s_.pos(torch.arange(idx.shape[1]))
    model.tok_emb=EmbPos(model.tok_emb, x0.shape[1])
if os.environ.get('UNTIE'):
    head=torch.nn.Linear(128,V.size,bias=False); torch.nn.init.normal_(head.weight,0,0.02); model.head=head
    def fwd(idx, kv_cache=None, return_qkv=False):
        x=model.tok_emb(idx); pos=torch.arange(idx.shape[1])
        for b in model.blocks: x,_=b(x,pos)
        return model.head(model.ln_f(x))
    model.forward=fwd
cfg=TrainConfig(lr=lr,weight_decay=0.1,warmup_steps=50); opt=make_optimizer(model,cfg)
xe,ae=batch(256,torch.Generator().manual_seed(99))
t0=time.time()
for s in range(steps):
    for g in opt.param_groups: g['lr']=lr_at(s,steps,cfg)
    x,_=batch(64,gen)
    lg=model(x[:,:-1]); loss=F.cross_entropy(lg.reshape(-1,V.size),x[:,1:].reshape(-1))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(),1.0); opt.step()
    if (s+1)%100==0:
        with torch.no_grad(): p=model(xe[:,:-1]).argmax(-1)
        acc=(p==xe[:,1:])[ae[:,1:]].float().mean().item()
        print(json.dumps({'ref':bool(os.environ.get('REF')),'std':os.environ.get('STD'),'norope':os.environ.get('NOROPE'),'untie':os.environ.get('UNTIE'),'embstd':os.environ.get('EMBSTD'),'explicit':os.environ.get('EXPLICIT'),'fmt':fmt,'k':k,'layers':layers,'lr':lr,'step':s+1,'s':round(time.time()-t0),'loss':round(loss.item(),3),'answer_acc':round(acc,3)}),flush=True)
