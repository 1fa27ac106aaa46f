# Run with the code at commit 1723ee4 (model format version 1): writes a model file and its prediction.
import sys, numpy as np, torch
sys.path.insert(0, "/tmp/old/tests")
from conftest import make_cache, tiny_encoder
from sam3dseg.config import load_run_config
from sam3dseg.synthetic import write_dataset, make_case
from sam3dseg.train import train, load_model_file
from sam3dseg.inference import Predictor, PredictConfig
out = sys.argv[1]
torch.manual_seed(0)
ds = write_dataset("/tmp/v1/ds", 3, "nnunet", seed=3)
make_cache(ds, "/tmp/v1/cache", image_size=32)
cfg = load_run_config(None, ["train.epochs=1", "train.steps_per_epoch=2", "train.crop_depth=4", "decoder.channels=[8,8,8,8]", "train.val_fraction=0"])
train("/tmp/v1/cache", "/tmp/v1/run", cfg, progress=False)
state = load_model_file("/tmp/v1/run/last.pt")
images, _, geometry = make_case(np.random.default_rng(4))
labels, _ = Predictor(state, tiny_encoder(32), PredictConfig(window=4)).predict_array(images[0], geometry)
import shutil; shutil.copy("/tmp/v1/run/last.pt", f"{out}/model_v1.pt")
np.save(f"{out}/model_v1_prediction.npy", labels)
print(labels.shape, np.bincount(labels.ravel()))
