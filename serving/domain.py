"""The domain servicer ``glassbox.v1.Glassbox``: classification, embeddings, Grad-CAM, VAEs."""
from __future__ import annotations

import asyncio
import json

import numpy as np

from . import explain
from ._generated.glassbox.v1 import glassbox_pb2 as pb
from ._generated.glassbox.v1 import glassbox_pb2_grpc as pb_grpc
from .errors import InvalidArgument
from .tensors import check_batch, from_proto, images_from_request, to_proto


async def _images(images: pb.Images, manifest: dict) -> np.ndarray:
    """The request's images as a checked float32 batch. PNG/JPEG decoding and resizing take real
    CPU time, so they run in a worker thread and the event loop keeps serving other calls."""
    if images.WhichOneof("kind") == "encoded":
        return await asyncio.to_thread(images_from_request, images, manifest)
    return images_from_request(images, manifest)


class GlassboxServicer(pb_grpc.GlassboxServicer):
    def __init__(self, runtime):
        self.rt = runtime

    async def _call(self, method: str, request, context, body, *, task: str | None = None, model: bool = True):
        """The one path every RPC takes. Inside ``Runtime.handle`` (UNAVAILABLE while draining, a ServingError
        becomes its status code and anything else INTERNAL, metrics per method and model):

        1. look the model up by ``request.name`` / ``request.version`` (UNAVAILABLE while loading, NOT_FOUND...);
        2. where ``task`` is given, check the model is one (INVALID_ARGUMENT otherwise);
        3. return ``await body(request, model, context)``: the RPC's own checks, inference and reply.

        ``model=False`` (ListModels) skips 1 and 2, and ``body`` gets the repository in place of a model.
        """
        async def go():
            if not model:
                return await body(request, self.rt.repository(), context)
            m = self.rt.model(request.name, request.version)
            if task is not None and m.manifest["task"] != task:
                raise InvalidArgument(f"{method} needs a {task} model; {m.name!r} is a {m.manifest['task']}")
            return await body(request, m, context)
        return await self.rt.handle(method, request.name if model else "", context, go)

    # The RPCs: name, the task the model must have, body.

    async def ListModels(self, request, context):
        return await self._call("ListModels", request, context, self._list_models, model=False)

    async def GetModel(self, request, context):
        return await self._call("GetModel", request, context, self._get_model)

    async def Classify(self, request, context):
        return await self._call("Classify", request, context, self._classify, task="classifier")

    async def Embed(self, request, context):
        return await self._call("Embed", request, context, self._embed, task="classifier")

    async def GradCam(self, request, context):
        return await self._call("GradCam", request, context, self._grad_cam, task="classifier")

    async def Explain(self, request, context):
        return await self._call("Explain", request, context, self._explain, task="classifier")

    async def Encode(self, request, context):
        return await self._call("Encode", request, context, self._encode, task="vae")

    async def Decode(self, request, context):
        return await self._call("Decode", request, context, self._decode, task="vae")

    async def Reconstruct(self, request, context):
        return await self._call("Reconstruct", request, context, self._reconstruct, task="vae")

    async def Interpolate(self, request, context):
        return await self._call("Interpolate", request, context, self._interpolate, task="vae")

    # Their bodies, in the same order: ``body(request, model, context)`` -> the reply.

    async def _list_models(self, request, repo, context):
        return pb.ListModelsResponse(models=[
            pb.ModelStatus(name=m.name, version=m.version, task=m.manifest.get("task", ""), ready=m.ready,
                           error=m.error, graphs=list(m.graphs), provider=m.provider, state=m.state,
                           directory=m.directory)
            for m in sorted(repo.all(), key=lambda m: (m.name, m.version, m.directory))])

    async def _get_model(self, request, m, context):
        man = m.manifest
        return pb.GetModelResponse(
            name=m.name, version=m.version, task=man["task"], labels=man.get("labels", []),
            layers=[pb.Layer(name=layer["name"], shape=layer["shape"]) for layer in man.get("layers", [])],
            cam_layer=man.get("cam_layer") or "", latent_dim=man.get("latent_dim") or 0, provider=m.provider,
            manifest_json=json.dumps({**man, "provider": m.provider}))

    async def _classify(self, request, m, context):
        if request.top_k < 0:
            raise InvalidArgument(f"top_k must be positive, got {request.top_k}")
        x = await _images(request.images, m.manifest)
        want = ["probabilities"] + (["logits"] if request.return_logits else [])
        out = await self.rt.infer(m, "classifier", {"input": x}, want, context)
        probs, labels = out["probabilities"], m.manifest["labels"]
        k = min(request.top_k or 5, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        preds = [pb.Prediction(indices=row.tolist(), probabilities=probs[i, row].tolist(),
                               labels=[labels[j] for j in row]) for i, row in enumerate(top)]
        return pb.ClassifyResponse(predictions=preds,
                                   logits=to_proto(out["logits"]) if request.return_logits else None)

    async def _embed(self, request, m, context):
        valid = m.graphs["classifier"].output_names  # the layers, logits and probabilities the graph exports
        if not request.layers:
            raise InvalidArgument(f"no layer requested; layers: {', '.join(valid)}")
        unknown = [name for name in request.layers if name not in valid]
        if unknown:
            raise InvalidArgument(f"unknown layer {', '.join(map(repr, unknown))} of {m.name!r}; "
                                  f"layers: {', '.join(valid)}")
        x = await _images(request.images, m.manifest)
        out = await self.rt.infer(m, "classifier", {"input": x}, list(dict.fromkeys(request.layers)), context)
        return pb.EmbedResponse(embeddings={k: to_proto(v) for k, v in out.items()})

    async def _grad_cam(self, request, m, context):
        if "gradcam" not in m.graphs:
            raise InvalidArgument(f"model {m.name!r} has no Grad-CAM graph (it has no spatial layer)")
        x = await _images(request.images, m.manifest)
        k = len(m.manifest["labels"])
        if request.targets:
            t = np.asarray(request.targets, np.int64)
            if len(t) != len(x):
                raise InvalidArgument(f"targets: {len(t)} given for {len(x)} images (one per image, or none)")
            if t.min() < 0 or t.max() >= k:
                raise InvalidArgument(f"targets: class index out of range 0..{k - 1}")
        else:
            logits = (await self.rt.infer(m, "classifier", {"input": x}, ["logits"], context))["logits"]
            t = logits.argmax(1).astype(np.int64)
        out = await self.rt.infer(m, "gradcam", {"input": x, "target": t}, ["cam", "logits"], context)
        return pb.GradCamResponse(cams=to_proto(out["cam"]), targets=t.tolist(), logits=to_proto(out["logits"]))

    async def _explain(self, request, m, context):
        graph, out_name = explain.check_method(request.method, m.manifest)
        x = await _images(request.images, m.manifest)
        if len(x) > (most := explain.max_images(request.method, m.manifest)):
            raise InvalidArgument(f"images: {len(x)} is above the maximum of {most} for {request.method!r}; split it")
        t = explain.check_targets(request.targets, len(x), len(m.manifest["labels"]))
        if t is None:
            logits = (await self.rt.infer(m, "classifier", {"input": x}, ["logits"], context))["logits"]
            t = logits.argmax(1).astype(np.int64)
        feeds, seed = {"input": x, "target": t}, 0
        if request.method == "smoothgrad":
            feeds["noise"], seed = explain.smoothgrad_noise(request.options, x, m.manifest)
        out = await self.rt.infer(m, graph, feeds, [out_name, "logits"], context)
        return pb.ExplainResponse(maps=to_proto(out[out_name]), targets=t.tolist(), logits=to_proto(out["logits"]),
                                  method=request.method, seed=seed)

    async def _encode(self, request, m, context):
        mean, logvar = await self._run_encoder(m, await _images(request.images, m.manifest), context)
        z = None
        if request.sample:
            rng = np.random.default_rng(request.seed or None)
            noise = rng.standard_normal(mean.shape).astype(np.float32)
            z = (mean + noise * np.exp(0.5 * logvar)).astype(np.float32)
        return pb.EncodeResponse(mean=to_proto(mean), logvar=to_proto(logvar),
                                 z=to_proto(z) if z is not None else None)

    async def _decode(self, request, m, context):
        z = from_proto(request.latents, "latents")
        return pb.ImagesResponse(images=to_proto(await self._run_decoder(m, z, context)))

    async def _reconstruct(self, request, m, context):
        mean, _ = await self._run_encoder(m, await _images(request.images, m.manifest), context)
        return pb.ImagesResponse(images=to_proto(await self._run_decoder(m, mean, context)))

    async def _interpolate(self, request, m, context):
        if request.alphas:
            alphas = np.asarray(request.alphas, np.float32)
            if not np.isfinite(alphas).all() or alphas.min() < 0 or alphas.max() > 1:
                raise InvalidArgument(f"alphas must lie in [0, 1], got {request.alphas[:8]}")
            if len(alphas) > int(m.manifest["max_batch_size"]):
                raise InvalidArgument(f"{len(alphas)} alphas is above the maximum of {m.manifest['max_batch_size']}")
        else:
            steps = request.steps or 10
            if not 2 <= steps <= int(m.manifest["max_batch_size"]):
                raise InvalidArgument(f"steps must be between 2 and {m.manifest['max_batch_size']}, got {steps}")
            alphas = np.linspace(0, 1, steps, dtype=np.float32)
        which = request.WhichOneof("endpoints")
        if which == "images":
            x = await _images(request.images, m.manifest)
            if len(x) != 2:
                raise InvalidArgument(f"Interpolate needs exactly 2 images, got {len(x)}")
            ends, _ = await self._run_encoder(m, x, context)
        elif which == "latents":
            ends = from_proto(request.latents, "latents")
            if ends.shape != (2, m.manifest["latent_dim"]):
                raise InvalidArgument(f"latents: shape {list(ends.shape)}, need [2, {m.manifest['latent_dim']}]")
            if not np.isfinite(ends).all():
                raise InvalidArgument("latents: contains NaN or Inf")
        else:
            raise InvalidArgument("Interpolate needs two images or two latents")
        z = (1 - alphas[:, None]) * ends[0] + alphas[:, None] * ends[1]
        return pb.ImagesResponse(images=to_proto(await self._run_decoder(m, z, context)), alphas=alphas.tolist())

    # Shared by the VAE bodies.

    async def _run_encoder(self, m, x, context):
        out = await self.rt.infer(m, "encoder", {"input": x}, ["mean", "logvar"], context)
        return out["mean"], out["logvar"]

    async def _run_decoder(self, m, z, context):
        z = check_batch(np.ascontiguousarray(z, np.float32), [-1, m.manifest["latent_dim"]],
                        int(m.manifest["max_batch_size"]), "latents")
        return (await self.rt.infer(m, "decoder", {"latent": z}, ["image"], context))["image"]
