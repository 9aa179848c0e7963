"""Detection / segmentation framework adapters, each tested end to end (train step + eval) on tiny inputs."""

import torch

# the two families every framework test covers: a CNN and an attention hierarchy
MODELS = ("eca_resnet18", "dinat_mini")


def boxes_and_masks(
    n_images: int = 2, height: int = 100, width: int = 84, n_objects: int = 2, num_classes: int = 3, seed: int = 0
):
    """Synthetic images ``[3, H, W]`` and torchvision-style targets (boxes xyxy, labels >= 1, binary masks)."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n_images):
        xy = torch.rand(n_objects, 2, generator=g) * torch.tensor([width * 0.5, height * 0.5])
        wh = 16 + torch.rand(n_objects, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
        boxes = torch.cat([xy, xy + wh], 1).round()
        masks = torch.zeros(n_objects, height, width, dtype=torch.uint8)
        for k, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[k, y0:y1, x0:x1] = 1
        labels = torch.randint(1, num_classes, (n_objects,), generator=g)
        images.append(torch.rand(3, height, width, generator=g))
        targets.append({"boxes": boxes, "labels": labels, "masks": masks})
    return images, targets
