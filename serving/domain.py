"""The domain servicer ``glassbox.v1.Glassbox``: classification, embeddings, Grad-CAM, VAEs."""
from __future__ import annotations

import asyncio
import json

import numpy as np

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


def _need(model, task: str, method: str) -> None:
    if model.manifest["task"] != task:
        raise InvalidArgument(f"{method} needs a {task} model; {model.name!r} is a {model.manifest['task']}")


class GlassboxServicer(pb_grpc.GlassboxServicer):
    def __init__(self, runtime):
        self.rt = runtime

    async def ListModels(self, request, context):
        async def go():
            if self.rt.repo is None:
                from .errors import Unavailable
                raise Unavailable("server is still loading models")
            return pb.ListModelsResponse(models=[
                pb.ModelStatus(name=m.name, version=m.version, task=m.manifest.get("task", ""), ready=m.ready,
                               error=m.error, graphs=list(m.graphs), provider=m.provider)
                for m in self.rt.repo.all()])
        return await self.rt.handle("ListModels", "", context, go)

    async def GetModel(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            man = m.manifest
            return pb.GetModelResponse(
                name=m.name, version=m.version, task=man["task"], labels=man.get("labels", []),
                layers=[pb.Layer(name=layer["name"], shape=layer["shape"]) for layer in man.get("layers", [])],
                cam_layer=man.get("cam_layer") or "", latent_dim=man.get("latent_dim") or 0, provider=m.provider,
                manifest_json=json.dumps({**man, "provider": m.provider}))
        return await self.rt.handle("GetModel", request.name, context, go)

    async def Classify(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "classifier", "Classify")
            if request.top_k < 0:
                raise InvalidArgument(f"top_k must be positive, got {request.top_k}")
            x = await _images(request.images, m.manifest)
            want = ["probabilities"] + (["logits"] if request.return_logits else [])
            out = await self.rt.run(m, "classifier", {"input": x}, want, context)
            probs, labels = out["probabilities"], m.manifest["labels"]
            k = min(request.top_k or 5, probs.shape[1])
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            preds = [pb.Prediction(indices=row.tolist(), probabilities=probs[i, row].tolist(),
                                   labels=[labels[j] for j in row]) for i, row in enumerate(top)]
            return pb.ClassifyResponse(predictions=preds, logits=to_proto(out["logits"]) if request.return_logits else None)
        return await self.rt.handle("Classify", request.name, context, go)

    async def Embed(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "classifier", "Embed")
            valid = m.graphs["classifier"].output_names  # the layers, logits and probabilities the graph exports
            if not request.layers:
                raise InvalidArgument(f"no layer requested; layers: {', '.join(valid)}")
            unknown = [name for name in request.layers if name not in valid]
            if unknown:
                raise InvalidArgument(f"unknown layer {', '.join(map(repr, unknown))} of {m.name!r}; layers: {', '.join(valid)}")
            x = await _images(request.images, m.manifest)
            out = await self.rt.run(m, "classifier", {"input": x}, list(dict.fromkeys(request.layers)), context)
            return pb.EmbedResponse(embeddings={k: to_proto(v) for k, v in out.items()})
        return await self.rt.handle("Embed", request.name, context, go)

    async def GradCam(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "classifier", "GradCam")
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
                logits = (await self.rt.run(m, "classifier", {"input": x}, ["logits"], context))["logits"]
                t = logits.argmax(1).astype(np.int64)
            out = await self.rt.run(m, "gradcam", {"input": x, "target": t}, ["cam", "logits"], context)
            return pb.GradCamResponse(cams=to_proto(out["cam"]), targets=t.tolist(), logits=to_proto(out["logits"]))
        return await self.rt.handle("GradCam", request.name, context, go)

    async def _encode(self, m, x, context):
        out = await self.rt.run(m, "encoder", {"input": x}, ["mean", "logvar"], context)
        return out["mean"], out["logvar"]

    async def _decode(self, m, z, context):
        z = check_batch(np.ascontiguousarray(z, np.float32), [-1, m.manifest["latent_dim"]],
                        int(m.manifest["max_batch_size"]), "latents")
        return (await self.rt.run(m, "decoder", {"latent": z}, ["image"], context))["image"]

    async def Encode(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "vae", "Encode")
            mean, logvar = await self._encode(m, await _images(request.images, m.manifest), context)
            z = None
            if request.sample:
                rng = np.random.default_rng(request.seed or None)
                z = (mean + rng.standard_normal(mean.shape).astype(np.float32) * np.exp(0.5 * logvar)).astype(np.float32)
            return pb.EncodeResponse(mean=to_proto(mean), logvar=to_proto(logvar), z=to_proto(z) if z is not None else None)
        return await self.rt.handle("Encode", request.name, context, go)

    async def Decode(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "vae", "Decode")
            return pb.ImagesResponse(images=to_proto(await self._decode(m, from_proto(request.latents, "latents"), context)))
        return await self.rt.handle("Decode", request.name, context, go)

    async def Reconstruct(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "vae", "Reconstruct")
            mean, _ = await self._encode(m, await _images(request.images, m.manifest), context)
            return pb.ImagesResponse(images=to_proto(await self._decode(m, mean, context)))
        return await self.rt.handle("Reconstruct", request.name, context, go)

    async def Interpolate(self, request, context):
        async def go():
            m = self.rt.model(request.name, request.version)
            _need(m, "vae", "Interpolate")
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
                ends, _ = await self._encode(m, x, context)
            elif which == "latents":
                ends = from_proto(request.latents, "latents")
                if ends.shape != (2, m.manifest["latent_dim"]):
                    raise InvalidArgument(f"latents: shape {list(ends.shape)}, need [2, {m.manifest['latent_dim']}]")
            else:
                raise InvalidArgument("Interpolate needs two images or two latents")
            z = (1 - alphas[:, None]) * ends[0] + alphas[:, None] * ends[1]
            return pb.ImagesResponse(images=to_proto(await self._decode(m, z, context)), alphas=alphas.tolist())
        return await self.rt.handle("Interpolate", request.name, context, go)
