"""Small recall experiments: train TinyGPT on a mix, monitor query-answer accuracy and colour-embedding collapse."""
import argparse, json, math, time, torch, torch.nn.functional as F
from common.tinylm import grammar as G
from common.tinylm.model import TinyGPT, TinyGPTConfig
from common.tinylm.train import answer_accuracy, lr_at, TrainConfig, make_optimizer, sample_batch
from common.harness.seeding import seeded_training
V=G.VOCAB; C0=V.index[G.COLORS[0]]; C1=C0+len(G.COLORS)
p=argparse.ArgumentParser()
p.add_argument('--layers',type=int,default=2); p.add_argument('--d',type=int,default=128); p.add_argument('--heads',type=int,default=4)
p.add_argument('--ctx',type=int,default=64); p.add_argument('--steps',type=int,default=1500); p.add_argument('--bs',type=int,default=32)
p.add_argument('--lr',type=float,default=3e-3); p.add_argument('--wd',type=float,default=0.1)
p.add_argument('--mix',default='{"recall_short":1}'); p.add_argument('--init',default=None); p.add_argument('--seed',type=int,default=0)
p.add_argument('--eval_every',type=int,default=250); p.add_argument('--seconds',type=float,default=1e9)
p.add_argument('--noise',type=float,default=0.0, help='add N(0,noise) to colour embeddings at start')
p.add_argument('--tag',default='')
a=p.parse_args()
gen=seeded_training(a.seed,threads=1)
cfg=TinyGPTConfig(V.size,d_model=a.d,n_layers=a.layers,n_heads=a.heads,context=a.ctx)
model=TinyGPT(cfg)
if a.init:
    from common.tinylm import load_tinylm
    m0,_,_=load_tinylm(a.init); model.load_state_dict(m0.state_dict())
if a.noise:
    with torch.no_grad(): model.tok_emb.weight[C0:C1]+=a.noise*torch.randn(C1-C0,a.d,generator=torch.Generator().manual_seed(1))
mix=json.loads(a.mix)
stream=G.corpus_tokens(max(a.steps*a.bs*a.ctx//2, 200000), a.seed, kinds=mix)
tc=TrainConfig(lr=a.lr,weight_decay=a.wd,warmup_steps=min(100,a.steps//10))
opt=make_optimizer(model,tc)
dists=[d for d in (20,40,64,128,160) if d+8<a.ctx]
eps={d:G.recall_episodes(200,d,1000+d) for d in dists}
def colour_cos():
    E=F.normalize(model.tok_emb.weight[C0:C1].detach(),dim=1); n=len(E); return ((E@E.T).sum()-n).item()/(n*n-n)
t0=time.time(); win=[]
for step in range(a.steps):
    frac=(time.time()-t0)/a.seconds
    lr=lr_at(step,a.steps,tc,frac if a.seconds<1e8 else None)
    for g in opt.param_groups: g['lr']=lr
    x,y=sample_batch(stream,a.bs,a.ctx,gen)
    lg=model(x); loss=F.cross_entropy(lg.reshape(-1,V.size),y.reshape(-1))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(),1.0); opt.step(); win.append(loss.item())
    last = step+1==a.steps or time.time()-t0>a.seconds
    if (step+1)%a.eval_every==0 or last:
        acc={d:round(answer_accuracy(model,*e),3) for d,e in eps.items()}; model.train()
        print(json.dumps({'tag':a.tag,'step':step+1,'s':round(time.time()-t0),'loss':round(sum(win)/len(win),4),'colour_cos':round(colour_cos(),3),'acc':acc}),flush=True); win=[]
    if last: break
if a.tag: torch.save(model.state_dict(), f'/tmp/rc/{a.tag}.pt')
