"""The datasets page: browse folders under the roots, the scan's plan, thumbnails and captions, tag tools."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel

from sd_lora.data.images import IMAGE_EXTENSIONS
from sd_lora.errors import SdLoraError
from sd_lora.fileio import printable
from sd_lora.studio import datasets

__all__ = ["router"]

_MAX_CAPTION = 64 << 10


class CaptionEdit(BaseModel):
    path: str  # ROOT/.../image.png (its caption file is beside it) or ROOT/.../caption.txt
    text: str
    extension: str = ".txt"


def router(studio, page) -> APIRouter:
    r = APIRouter()
    roots = studio.roots

    def caption_path(client_path: str, extension: str):
        if not extension.startswith(".") or "/" in extension or "\\" in extension or len(extension) > 16:
            raise SdLoraError(f"extension {extension!r}: expected a file extension such as .txt")
        target = roots.resolve(client_path, must_exist=False)
        if target.suffix.lower() in IMAGE_EXTENSIONS:
            target = target.with_suffix(extension)
        if target.suffix != extension:
            raise SdLoraError(f"{client_path}: not an image or a {extension} caption file")
        if not target.parent.is_dir():
            raise LookupError(f"{client_path}: its folder does not exist")
        return target

    @r.get("/datasets")
    async def datasets_page(request: Request, path: str = "", resolution: int = 512, batch_size: int = 1,
                            repeats: int = 1, extension: str = ".txt", note: str = ""):
        if not path:
            return page(request, "datasets.html", folder=None, path="", subfolders=[], images=[], plan="",
                        warnings=[], tags=[], note=note, resolution=resolution, extension=extension,
                        batch_size=batch_size, repeats=repeats)
        folder = roots.resolve(path)
        if not folder.is_dir():
            raise SdLoraError(f"{path}: not a folder")
        images = datasets.images_in(folder)
        plan, warnings = "", []
        if images:
            try:
                plan, warnings = datasets.folder_plan(folder, resolution, batch_size, repeats)
            except SdLoraError as e:
                warnings = [str(e)]
        warnings = [printable(w) for w in warnings]
        odd = datasets.unaddressable(folder)
        if odd:
            warnings.append(f"skipped {len(odd)} file(s) or folder(s) whose name is not UTF-8 text (bytes shown as "
                            f"\\xNN): {', '.join(odd[:20])}; rename them to see them here")
        shown = []
        for image in images[:500]:
            caption = image.with_suffix(extension)
            shown.append({"path": roots.client_path(image), "name": image.name,
                          "caption": datasets.read_caption(caption).text if caption.is_file() else "",
                          "has_caption": caption.is_file()})
        subs = [roots.client_path(p) for p in datasets.subfolders(folder)]
        tags = datasets.tag_counts(folder, extension).most_common(200)
        return page(request, "datasets.html", folder=folder, path=roots.client_path(folder), subfolders=subs,
                    images=shown, plan=plan, warnings=warnings, tags=tags, note=note, resolution=resolution,
                    extension=extension, batch_size=batch_size, repeats=repeats, more=max(0, len(images) - 500))

    @r.get("/api/thumb")
    async def thumb(path: str, size: int = 160):
        target = roots.resolve(path)
        if target.suffix.lower() not in IMAGE_EXTENSIONS or not target.is_file():
            raise SdLoraError(f"{path}: not an image")
        return Response(datasets.thumbnail(target, max(16, min(size, 512))), media_type="image/jpeg",
                        headers={"cache-control": "no-cache"})

    @r.get("/api/captions")
    async def get_caption(path: str, extension: str = ".txt"):
        target = caption_path(path, extension)
        caption = datasets.read_caption(target)
        return {"path": roots.client_path(target), "text": caption.text, "encoding": caption.encoding,
                "exists": target.is_file()}

    @r.post("/api/captions")
    async def edit_caption(edit: CaptionEdit):
        if len(edit.text) > _MAX_CAPTION:
            raise SdLoraError(f"caption of {len(edit.text):,} characters is over the limit of {_MAX_CAPTION:,}")
        target = caption_path(edit.path, edit.extension)
        caption = datasets.write_caption(target, edit.text)
        return {"path": roots.client_path(target), "text": caption.text, "encoding": caption.encoding}

    @r.post("/datasets/replace")
    async def replace(request: Request):
        form = await request.form()
        path, extension = str(form.get("path", "")), str(form.get("extension", ".txt")) or ".txt"
        folder = roots.resolve(path)
        if not folder.is_dir():
            raise SdLoraError(f"{path}: not a folder")
        caption_path(f"{path}/x{extension}", extension)  # checks the extension
        changed = datasets.replace_tag(folder, str(form.get("find", "")), str(form.get("replace", "")), extension)
        note = f"replaced {str(form.get('find', '')).strip()!r} in {changed} caption file(s)"
        return RedirectResponse(f"/datasets?path={quote(path)}&extension={quote(extension)}&note={quote(note)}",
                                status_code=303)

    return r
