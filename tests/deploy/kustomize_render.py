"""Renders a kustomization the way `kustomize build --load-restrictor LoadRestrictionsNone` does,
for the subset deploy/kubernetes uses, and refuses anything else (an unknown key is an error,
never ignored): resources (files and kustomization directories), namespace, generatorOptions
(disableNameSuffixHash, labels), configMapGenerator and secretGenerator (files, literals, envs,
options.labels, behavior create/merge/replace), images (newName, newTag, digest) and patches
given as JSON 6902 operations with a kind/name target.

No Debian package ships kustomize (kubectl's own is not in Debian), hence this renderer for the
tests (tests/tests/deploy_kubernetes.rs). Output: the resources as one JSON list.

    python kustomize_render.py DIR
"""

import base64
import copy
import json
import os
import sys

import yaml

KNOWN = {"apiVersion", "kind", "namespace", "resources", "generatorOptions",
         "configMapGenerator", "secretGenerator", "images", "patches"}


class RenderError(Exception):
    pass


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def check_keys(what, mapping, allowed):
    unknown = set(mapping) - set(allowed)
    if unknown:
        raise RenderError(f"{what}: unsupported keys {sorted(unknown)}")


def read_env_file(path):
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = line.partition("=")
            if not sep:
                raise RenderError(f"{path}: {line!r} is not KEY=value")
            values[key] = value
    return values


def generator_data(root, gen):
    """The data of one generator, in the order kustomize writes it."""
    check_keys("generator", gen, {"name", "behavior", "files", "literals", "envs", "options"})
    data = {}
    for env in gen.get("envs", []):
        data.update(read_env_file(os.path.join(root, env)))
    for literal in gen.get("literals", []):
        key, sep, value = literal.partition("=")
        if not sep:
            raise RenderError(f"literal {literal!r} is not KEY=value")
        data[key] = value
    for entry in gen.get("files", []):
        key, sep, path = entry.partition("=")
        if not sep:
            key, path = os.path.basename(entry), entry
        with open(os.path.join(root, path), encoding="utf-8") as f:
            data[key] = f.read()
    return data


def generate(root, kind, gen, options):
    if not options.get("disableNameSuffixHash"):
        raise RenderError("only generatorOptions.disableNameSuffixHash: true is supported")
    labels = dict(options.get("labels", {}))
    labels.update(gen.get("options", {}).get("labels", {}))
    check_keys("generator options", gen.get("options", {}), {"labels"})
    data = generator_data(root, gen)
    resource = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if labels:
        resource["metadata"]["labels"] = labels
    if kind == "Secret":
        resource["type"] = "Opaque"
        resource["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        resource["data"] = data
    return resource


def find(resources, kind, name):
    for r in resources:
        if r.get("kind") == kind and r.get("metadata", {}).get("name") == name:
            return r
    return None


def apply_generator(resources, root, kind, gen, options):
    made = generate(root, kind, gen, options)
    behavior = gen.get("behavior", "create")
    existing = find(resources, kind, gen["name"])
    if behavior == "create":
        if existing is not None:
            raise RenderError(f"{kind} {gen['name']} exists: use behavior merge or replace")
        resources.append(made)
    elif existing is None:
        raise RenderError(f"{kind} {gen['name']}: nothing to {behavior}")
    elif behavior == "merge":
        existing.setdefault("data", {}).update(made["data"])
    elif behavior == "replace":
        existing["data"] = made["data"]
    else:
        raise RenderError(f"unknown behavior {behavior}")


def pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    parent = doc
    for part in parts[:-1]:
        parent = parent[int(part)] if isinstance(parent, list) else parent[part]
    return parent, parts[-1]


def apply_json6902(resource, ops):
    for op in ops:
        check_keys("patch operation", op, {"op", "path", "value"})
        parent, last = pointer(resource, op["path"])
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if op["op"] == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif op["op"] == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[index]
            else:
                raise RenderError(f"unsupported op {op['op']}")
        else:
            if op["op"] in ("add", "replace"):
                if op["op"] == "replace" and last not in parent:
                    raise RenderError(f"replace of missing {op['path']}")
                parent[last] = copy.deepcopy(op["value"])
            elif op["op"] == "remove":
                del parent[last]
            else:
                raise RenderError(f"unsupported op {op['op']}")


def set_images(resources, images):
    for image in images:
        check_keys("image", image, {"name", "newName", "newTag", "digest"})
        for r in resources:
            spec = r.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("initContainers", []) + spec.get("containers", []):
                name, _, tag = c["image"].partition(":")
                if name != image["name"]:
                    continue
                new = image.get("newName", name)
                if "digest" in image:
                    c["image"] = f"{new}@{image['digest']}"
                else:
                    c["image"] = f"{new}:{image.get('newTag', tag)}"


def render(root):
    with open(os.path.join(root, "kustomization.yaml"), encoding="utf-8") as f:
        k = yaml.safe_load(f)
    check_keys(root, k, KNOWN)
    resources = []
    for entry in k.get("resources", []):
        path = os.path.join(root, entry)
        if os.path.isdir(path):
            resources.extend(render(path))
        else:
            resources.extend(load_yaml_docs(path))
    options = k.get("generatorOptions", {})
    check_keys("generatorOptions", options, {"disableNameSuffixHash", "labels"})
    for gen in k.get("configMapGenerator", []):
        apply_generator(resources, root, "ConfigMap", gen, options)
    for gen in k.get("secretGenerator", []):
        apply_generator(resources, root, "Secret", gen, options)
    set_images(resources, k.get("images", []))
    for patch in k.get("patches", []):
        check_keys("patch", patch, {"target", "patch"})
        target = patch["target"]
        check_keys("patch target", target, {"kind", "name"})
        resource = find(resources, target["kind"], target["name"])
        if resource is None:
            raise RenderError(f"patch target {target} not found")
        apply_json6902(resource, yaml.safe_load(patch["patch"]))
    if "namespace" in k:
        for r in resources:
            if r.get("kind") != "Namespace":
                r.setdefault("metadata", {})["namespace"] = k["namespace"]
    return resources


if __name__ == "__main__":
    try:
        json.dump(render(sys.argv[1]), sys.stdout, indent=1)
    except (RenderError, OSError, KeyError, IndexError, ValueError, yaml.YAMLError) as e:
        print(f"kustomize_render: {e}", file=sys.stderr)
        sys.exit(2)
