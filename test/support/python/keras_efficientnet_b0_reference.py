#!/usr/bin/python3
"""Independent float64 numpy reference for Keras EfficientNetB0(include_top=False, pooling="avg").

Written from Keras semantics (keras/applications/efficientnet.py, Keras 2.9-2.15) and
/work/shared/EFFICIENTNET_B0.md, never from the project's TypeScript model, so that a disagreement
between the two points at a real bug on one side. Needs only numpy, h5py and PIL (torch: selftest).

  embed        --weights W.h5 --pixels X.npy --out Y.npy    uint8 [N,H,W,3] RGB -> float64 [N,1280]
  make-weights --calib C.npy --seed S --out W.h5 [--fixed-strings]
               seeded random weights whose BN moving statistics are measured on the images C.npy
  photos       --out P.npy [--size 224] FILE...              JPEG/PNG -> uint8 [N,size,size,3]
  layers       print the Keras layer list (name class weight[shape]...), diffable with
               /work/shared/efficientnet-b0-layers.txt
  selftest     numpy conv/padding helpers against torch.nn.functional.conv2d in float64
"""
import argparse
import sys
import time

import numpy as np

# Keras DEFAULT_BLOCKS_ARGS at width/depth 1.0: (kernel, repeats, filters_in, filters_out, expand, stride).
STAGES = [(3, 1, 32, 16, 1, 1), (3, 2, 16, 24, 6, 2), (5, 2, 24, 40, 6, 2), (3, 3, 40, 80, 6, 2),
          (5, 3, 80, 112, 6, 1), (5, 4, 112, 192, 6, 2), (3, 1, 192, 320, 6, 1)]
SE_RATIO, BN_EPS = 0.25, 1e-3
NORM_EPS = 1e-7  # keras.backend.epsilon(): Normalization divides by max(sqrt(variance), this)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
STEM, TOP = 32, 1280
TOTAL_PARAMS = 4_049_571  # from the .md, Normalization's mean/variance/count included
HDF5_OBJECT_HEADER_LIMIT = 64512  # Keras splits a larger attribute into name0, name1, ...


# ---------------------------------------------------------------- architecture
def blocks():
    """(prefix, kernel, stride, filters_in, filters_out, expand) per block; repeats get stride 1, in = out."""
    for i, (k, reps, fin, fout, e, s) in enumerate(STAGES):
        for j in range(reps):
            yield 'block%d%s_' % (i + 1, chr(97 + j)), k, s if j == 0 else 1, fin if j == 0 else fout, fout, e


def keras_layers():
    """Every layer in Keras model.layers order: (name, class, [(weight, shape), ...])."""
    def conv(k, cin, cout, bias=False):
        return [('kernel', (k, k, cin, cout))] + ([('bias', (cout,))] if bias else [])

    def bn(c):
        return [(w, (c,)) for w in ('gamma', 'beta', 'moving_mean', 'moving_variance')]

    L = [('input_1', 'InputLayer', []), ('rescaling', 'Rescaling', []),
         ('normalization', 'Normalization', [('mean', (3,)), ('variance', (3,)), ('count', ())]),
         ('rescaling_1', 'Rescaling', []), ('stem_conv_pad', 'ZeroPadding2D', []),
         ('stem_conv', 'Conv2D', conv(3, 3, STEM)), ('stem_bn', 'BatchNormalization', bn(STEM)),
         ('stem_activation', 'Activation', [])]
    for p, k, s, fin, fout, e in blocks():
        f, fse = fin * e, max(1, int(fin * SE_RATIO))  # SE width follows the block's *input* width
        if e != 1:
            L += [(p + 'expand_conv', 'Conv2D', conv(1, fin, f)), (p + 'expand_bn', 'BatchNormalization', bn(f)),
                  (p + 'expand_activation', 'Activation', [])]
        if s == 2:
            L.append((p + 'dwconv_pad', 'ZeroPadding2D', []))
        L += [(p + 'dwconv', 'DepthwiseConv2D', [('depthwise_kernel', (k, k, f, 1))]),
              (p + 'bn', 'BatchNormalization', bn(f)), (p + 'activation', 'Activation', []),
              (p + 'se_squeeze', 'GlobalAveragePooling2D', []), (p + 'se_reshape', 'Reshape', []),
              (p + 'se_reduce', 'Conv2D', conv(1, f, fse, True)), (p + 'se_expand', 'Conv2D', conv(1, fse, f, True)),
              (p + 'se_excite', 'Multiply', []), (p + 'project_conv', 'Conv2D', conv(1, f, fout)),
              (p + 'project_bn', 'BatchNormalization', bn(fout))]
        if s == 1 and fin == fout:
            L += [(p + 'drop', 'Dropout', []), (p + 'add', 'Add', [])]
    L += [('top_conv', 'Conv2D', conv(1, STAGES[-1][3], TOP)), ('top_bn', 'BatchNormalization', bn(TOP)),
          ('top_activation', 'Activation', []), ('avg_pool', 'GlobalAveragePooling2D', [])]
    return L


# ---------------------------------------------------------------- numpy ops (NHWC, float64)
def sigmoid(x):
    with np.errstate(over='ignore'):  # exp(-x) -> inf for x < -709 gives the correct limit 0
        return 1.0 / (1.0 + np.exp(-x))


def swish(x):
    return x * sigmoid(x)


def correct_pad(h, w, k):
    """keras imagenet_utils.correct_pad: ((top, bottom), (left, right)); even sizes pad bottom/right more."""
    return (k // 2 - (1 - h % 2), k // 2), (k // 2 - (1 - w % 2), k // 2)


def same_pad(k):
    """TF 'same' at stride 1: total k - 1, the odd pixel (even k only) goes bottom/right."""
    return (k - 1) // 2, k - 1 - (k - 1) // 2


def pad(x, hp, wp):
    return np.pad(x, ((0, 0), tuple(hp), tuple(wp), (0, 0)))


def _taps(xp, k, stride):
    """The k*k strided shifted views of a padded tensor that a 'valid' conv reads, in (i, j) order."""
    ho, wo = (xp.shape[1] - k) // stride + 1, (xp.shape[2] - k) // stride + 1
    return [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(k) for j in range(k)]


def depthwise(xp, kern, stride):
    """'valid' DepthwiseConv2D (cross-correlation, kernel (k,k,C,1)) on a padded input."""
    k = kern.shape[0]
    out = None
    for t, tap in enumerate(_taps(xp, k, stride)):
        term = tap * kern[t // k, t % k, :, 0]
        out = term if out is None else out + term
    return out


def conv_im2col(xp, kern, stride):
    """'valid' Conv2D with kernel (kh,kw,in,out): patches ordered (i, j, cin) to match kern.reshape."""
    k, _, cin, cout = kern.shape
    cols = np.stack(_taps(xp, k, stride), axis=3)  # (n, ho, wo, k*k, cin)
    n, ho, wo = cols.shape[:3]
    return (cols.reshape(-1, k * k * cin) @ kern.reshape(-1, cout)).reshape(n, ho, wo, cout)


def pointwise(x, kern, bias=None):
    n, h, w, c = x.shape
    y = x.reshape(-1, c) @ kern.reshape(c, -1)
    if bias is not None:
        y = y + bias
    return y.reshape(n, h, w, -1)


# ---------------------------------------------------------------- forward pass
def forward(x, P):
    """x: float64 NHWC in [0, 255]. P(name, layer_input) -> {weight: float64 array} for that layer
    (the input is passed so make-weights can measure BN statistics on the way)."""
    def bn(t, name):
        w = P(name, t)
        return (t - w['moving_mean']) / np.sqrt(w['moving_variance'] + BN_EPS) * w['gamma'] + w['beta']

    w = P('normalization', x)
    x = x * (1.0 / 255.0)
    x = (x - w['mean']) / np.maximum(np.sqrt(w['variance']), NORM_EPS)
    # Keras >= 2.9 `rescaling_1`: the file's "variance" holds the std, so divide by sqrt(std) once more.
    x = x * (1.0 / np.sqrt(np.array(IMAGENET_STD)))
    x = conv_im2col(pad(x, *correct_pad(x.shape[1], x.shape[2], 3)), P('stem_conv', x)['kernel'], 2)
    x = swish(bn(x, 'stem_bn'))
    for p, k, s, fin, fout, e in blocks():
        inputs = x
        if e != 1:
            x = swish(bn(pointwise(x, P(p + 'expand_conv', x)['kernel']), p + 'expand_bn'))
        xp = pad(x, *correct_pad(x.shape[1], x.shape[2], k)) if s == 2 else pad(x, same_pad(k), same_pad(k))
        x = depthwise(xp, P(p + 'dwconv', x)['depthwise_kernel'], s)
        x = swish(bn(x, p + 'bn'))
        se = x.mean(axis=(1, 2), keepdims=True)
        w = P(p + 'se_reduce', se)
        se = swish(pointwise(se, w['kernel'], w['bias']))
        w = P(p + 'se_expand', se)
        x = x * sigmoid(pointwise(se, w['kernel'], w['bias']))
        x = bn(pointwise(x, P(p + 'project_conv', x)['kernel']), p + 'project_bn')
        if s == 1 and fin == fout:  # Dropout is the identity at inference
            x = x + inputs
    x = swish(bn(pointwise(x, P('top_conv', x)['kernel']), 'top_bn'))
    return x.mean(axis=(1, 2))


# ---------------------------------------------------------------- Keras legacy HDF5
def _save_attr(obj, name, data, fixed):
    # Keras assigns the Python list: h5py 3 writes variable-length ASCII, h5py 2 (the era of the
    # official files) wrote fixed-length |S. --fixed-strings makes the latter, so readers meet both.
    arr = np.asarray(data)
    chunks = 1
    while any(c.nbytes > HDF5_OBJECT_HEADER_LIMIT for c in np.array_split(arr, chunks)):
        chunks += 1
    value = (np.array(data, dtype='S') if data else data) if fixed else data
    if chunks == 1:
        obj.attrs[name] = value
    else:
        for i, c in enumerate(np.array_split(np.asarray(value), chunks)):
            obj.attrs['%s%d' % (name, i)] = c


def _load_attr(obj, name):
    if name in obj.attrs:
        vals = list(np.atleast_1d(obj.attrs[name]))
    else:
        vals, i = [], 0
        while '%s%d' % (name, i) in obj.attrs:
            vals += list(np.atleast_1d(obj.attrs['%s%d' % (name, i)]))
            i += 1
    return [v.decode('utf8') if isinstance(v, bytes) else str(v) for v in vals]


def write_keras_h5(path, weights, fixed=False):
    import h5py
    layers = keras_layers()
    with h5py.File(path, 'w') as f:
        _save_attr(f, 'layer_names', [n.encode('utf8') for n, _, _ in layers], fixed)
        f.attrs['backend'] = np.bytes_(b'tensorflow') if fixed else b'tensorflow'
        f.attrs['keras_version'] = np.bytes_(b'2.15.0') if fixed else b'2.15.0'
        for name, _, spec in sorted(layers, key=lambda l: l[0]):  # Keras creates groups in name order
            g = f.create_group(name)
            names = ['%s/%s:0' % (name, wn) for wn, _ in spec]
            _save_attr(g, 'weight_names', [n.encode('utf8') for n in names], fixed)
            for n, (wn, _) in zip(names, spec):
                v = weights[name][wn]
                g.create_dataset(n, v.shape, dtype=v.dtype)[()] = v


def read_keras_h5(path):
    """{layer: {weight: array}} for every layer of the file, checked against the B0 shapes by name."""
    import h5py
    got = {}
    with h5py.File(path, 'r') as f:
        root = f
        if not _load_attr(f, 'layer_names') and 'model_weights' in f:
            root = f['model_weights']
        for name in _load_attr(root, 'layer_names'):
            g = root[name]
            got[name] = {n.split('/')[-1].split(':')[0]: np.array(g[n][()]) for n in _load_attr(g, 'weight_names')}
    for name, cls, spec in keras_layers():
        if not spec:
            continue
        if name not in got:
            sys.exit('%s: no layer %r (%s) in layer_names' % (path, name, cls))
        have = {k: tuple(v.shape) for k, v in got[name].items()}
        if have != dict(spec):
            sys.exit('%s: layer %r has weights %s, EfficientNetB0 expects %s' % (path, name, have, dict(spec)))
    return got


def file_params(path):
    w = {n: {k: v.astype(np.float64) for k, v in d.items()} for n, d in read_keras_h5(path).items()}
    return lambda name, _x: w[name]


class CalibratingMaker:
    """Creates each layer's weights on first use. BN moving statistics are the per-channel mean and
    variance of that BN's real input over the calibration batch (data-dependent init), so the network
    stays well-conditioned and distinct images keep distinct embeddings. Every value is rounded to
    float32 before use so the calibration pass computes exactly what `embed` will from the file."""

    def __init__(self, seed):
        self.rng, self.weights = np.random.default_rng(seed), {}
        self.spec = {n: dict(ws) for n, _, ws in keras_layers()}

    def __call__(self, name, x):
        spec, r = self.spec[name], self.rng
        if name == 'normalization':  # the official file's values; count is unused at inference
            w = {'mean': np.array(IMAGENET_MEAN), 'variance': np.array(IMAGENET_STD), 'count': np.int64(0)}
        elif 'moving_mean' in spec:
            c = spec['gamma'][0]
            w = {'gamma': r.uniform(0.6, 1.4, c), 'beta': r.normal(0.0, 0.15, c),
                 'moving_mean': x.mean(axis=(0, 1, 2)), 'moving_variance': x.var(axis=(0, 1, 2))}
        else:
            kname = 'depthwise_kernel' if 'depthwise_kernel' in spec else 'kernel'
            shape = spec[kname]
            fan_in = shape[0] * shape[1] * (1 if kname == 'depthwise_kernel' else shape[2])
            # SE gates that are shut on the calibration images but open on an unseen one multiply a
            # channel by ~100 after the next BN, compounding over 16 blocks (measured: one mate photo
            # embedded at 50x the norm of the rest). Gates mostly open (sigmoid(~1)) and a gentler SE
            # kernel keep unseen images within a few x of the calibration images, as a trained net does.
            se = name.endswith(('se_reduce', 'se_expand'))
            w = {kname: r.normal(0.0, np.sqrt(2.0 / fan_in) * (0.5 if se else 1.0), shape)}
            if 'bias' in spec:
                w['bias'] = r.normal(1.0 if name.endswith('se_expand') else 0.0, 0.3, spec['bias'])
        self.weights[name] = {k: np.asarray(v, np.int64 if k == 'count' else np.float32) for k, v in w.items()}
        return {k: v.astype(np.float64) for k, v in self.weights[name].items()}


# ---------------------------------------------------------------- commands
def load_pixels(path):
    px = np.load(path)
    if px.dtype != np.uint8 or px.ndim != 4 or px.shape[3] != 3:
        sys.exit('%s: want uint8 [N,H,W,3] RGB, got %s %s' % (path, px.dtype, px.shape))
    return px


def embed(params, px):
    out = np.empty((len(px), TOP))
    for i in range(len(px)):  # one image at a time: results do not depend on batch composition
        out[i] = forward(px[i:i + 1].astype(np.float64), params)[0]
    return out


def cmd_embed(a):
    params, px = file_params(a.weights), load_pixels(a.pixels)
    t0 = time.time()
    out = embed(params, px)
    dt = time.time() - t0
    np.save(a.out, out)
    print('embedded %d images in %.2fs (%.2fs/image)' % (len(px), dt, dt / max(1, len(px))), file=sys.stderr)
    if not np.isfinite(out).all():
        sys.exit('non-finite embeddings')


def diagnose(emb, px):
    """Print spread figures; False when distinct images collapse onto (nearly) the same embedding."""
    u = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    c = emb - emb.mean(axis=0)
    uc = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-300)
    pairs = [(i, j) for i in range(len(px)) for j in range(i + 1, len(px)) if not np.array_equal(px[i], px[j])]
    if not pairs:
        print('no two calibration images differ: cannot judge diversity')
        return False
    cos = np.array([u[i] @ u[j] for i, j in pairs])
    ccos = np.array([uc[i] @ uc[j] for i, j in pairs])
    std = emb.std(axis=0)
    print('embeddings: %d images, finite=%s, mean |e|=%.4g, value range [%.4g, %.4g]'
          % (len(emb), np.isfinite(emb).all(), np.linalg.norm(emb, axis=1).mean(), emb.min(), emb.max()))
    print('pairwise cosine over %d distinct pairs: mean %.4f, min %.4f, max %.4f' % (len(pairs), cos.mean(), cos.min(), cos.max()))
    print('centred pairwise cosine: mean %.4f, max %.4f' % (ccos.mean(), ccos.max()))
    print('per-feature std across images: mean %.4g, median %.4g, features with std < 1e-6: %d/%d'
          % (std.mean(), np.median(std), (std < 1e-6).sum(), len(std)))
    return bool(np.isfinite(emb).all()) and cos.max() <= 0.999


def cmd_make_weights(a):
    px = load_pixels(a.calib)
    if len(px) < 2:
        sys.exit('need at least 2 calibration images')
    maker = CalibratingMaker(a.seed)
    t0 = time.time()
    calib_emb = forward(px.astype(np.float64), maker)  # the whole batch: BN stats need every image
    n_params = sum(v.size for d in maker.weights.values() for v in d.values())
    if n_params != TOTAL_PARAMS or set(maker.weights) != {n for n, _, s in keras_layers() if s}:
        sys.exit('architecture walk gave %d parameters, expected %d' % (n_params, TOTAL_PARAMS))
    write_keras_h5(a.out, maker.weights, a.fixed_strings)
    print('wrote %s: %d layers, %d parameters, seed %d, BN statistics from %d images (%.1fs)'
          % (a.out, len(keras_layers()), n_params, a.seed, len(px), time.time() - t0))
    emb = embed(file_params(a.out), px)  # read back through the loader, as a consumer would
    print('file round trip vs calibration pass: max |diff| %.3g' % np.abs(emb - calib_emb).max())
    if not diagnose(emb, px):
        sys.exit('degenerate weights: distinct images give (nearly) identical embeddings')


def cmd_photos(a):
    from PIL import Image
    bilinear = getattr(Image, 'Resampling', Image).BILINEAR
    imgs = []
    for path in a.files:
        with Image.open(path) as im:
            imgs.append(np.asarray(im.convert('RGB').resize((a.size, a.size), bilinear), dtype=np.uint8))
    np.save(a.out, np.stack(imgs))
    print('wrote %s: uint8 %s' % (a.out, (len(imgs), a.size, a.size, 3)), file=sys.stderr)


def cmd_layers(_a):
    for name, cls, spec in keras_layers():
        print('%s %s %s' % (name, cls, ' '.join('%s[%s]' % (w, ', '.join(map(str, s))) for w, s in spec)))


def cmd_selftest(_a):
    import torch
    import torch.nn.functional as F
    rng, worst = np.random.default_rng(0), 0.0

    def check(label, ours, x, kern_t, hp, wp, stride, groups):
        xt0 = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        xt = F.pad(xt0, (wp[0], wp[1], hp[0], hp[1]))  # torch pads (left, right, top, bottom)
        ref = F.conv2d(xt, torch.from_numpy(np.ascontiguousarray(kern_t)), stride=stride, groups=groups)
        d = np.abs(ours - ref.numpy().transpose(0, 2, 3, 1)).max()
        print('%-44s max |diff| %.3g' % (label, d))
        return d

    for k in (3, 5):
        for s in (1, 2):
            for h, w in ((16, 16), (16, 15)):
                x, kern = rng.normal(size=(2, h, w, 6)), rng.normal(size=(k, k, 6, 1))
                hp, wp = correct_pad(h, w, k) if s == 2 else (same_pad(k), same_pad(k))
                worst = max(worst, check('depthwise k=%d stride=%d %dx%d pad %s %s' % (k, s, h, w, hp, wp),
                                         depthwise(pad(x, hp, wp), kern, s), x, kern[..., 0].transpose(2, 0, 1)[:, None],
                                         hp, wp, s, 6))
    x, kern = rng.normal(size=(2, 32, 32, 3)), rng.normal(size=(3, 3, 3, 8))
    hp, wp = correct_pad(32, 32, 3)
    worst = max(worst, check('stem im2col 3x3 stride 2 correct_pad', conv_im2col(pad(x, hp, wp), kern, 2),
                             x, kern.transpose(3, 2, 0, 1), hp, wp, 2, 1))
    x, kern = rng.normal(size=(2, 7, 7, 12)), rng.normal(size=(1, 1, 12, 5))
    worst = max(worst, check('pointwise 1x1', pointwise(x, kern), x, kern.transpose(3, 2, 0, 1), (0, 0), (0, 0), 1, 1))
    # For stride 2 and odd k, correct_pad coincides with TF/TF.js 'same' (pad_total split floor/ceil).
    def tf_same(n, k, s):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2
    agree = all(correct_pad(n, n, k)[0] == tf_same(n, k, 2) for n in (224, 112, 56, 28, 225, 113) for k in (3, 5))
    print("correct_pad == TF 'same' at stride 2 for sizes 224..28 and odd sizes: %s" % agree)
    print('worst %.3g' % worst)
    if worst > 1e-10:
        sys.exit('selftest FAILED')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='cmd', required=True)
    p = sub.add_parser('embed')
    p.add_argument('--weights', required=True)
    p.add_argument('--pixels', required=True)
    p.add_argument('--out', required=True)
    p = sub.add_parser('make-weights')
    p.add_argument('--calib', required=True)
    p.add_argument('--seed', type=int, required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--fixed-strings', action='store_true', help='fixed-length |S attributes (h5py 2 style)')
    p = sub.add_parser('photos')
    p.add_argument('--out', required=True)
    p.add_argument('--size', type=int, default=224)
    p.add_argument('files', nargs='+')
    sub.add_parser('layers')
    sub.add_parser('selftest')
    a = ap.parse_args()
    {'embed': cmd_embed, 'make-weights': cmd_make_weights, 'photos': cmd_photos,
     'layers': cmd_layers, 'selftest': cmd_selftest}[a.cmd](a)


if __name__ == '__main__':
    main()
