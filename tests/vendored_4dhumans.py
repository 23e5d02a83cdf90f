# Vendored from 4D-Humans (https://github.com/shubham-goel/4D-Humans), commit
# 6ec79656a23c33237c724742ca2a0ec00b398b53, files hmr2/datasets/image_dataset.py and
# hmr2/datasets/utils.py: the tar loader 4D-Humans trains with, so the tests run our shards through
# its own code. Only what that loader needs is kept. Changes (each also marked "CHANGED" below):
#   1. yacs' CfgNode is replaced by the small dict-with-attributes class ``CfgNode`` below
#      (yacs is not a dependency of ours); the type annotations keep the name.
#   2. load_tars_as_webdataset and process_webdataset_tar_item are module functions (they were
#      static methods of ImageDataset); CORRUPT_KEYS (keys of AIC tars) is an empty set.
#   3. SUPPRESS_BAD_POSES (a prior over AMASS poses read from a data file 4D-Humans downloads)
#      raises NotImplementedError instead of loading that file.
#   4. get_example: the EFT "extreme cropping" branch (EXTREME_CROP_AUG_RATE) and the skimage
#      antialiasing branch are removed; they raise NotImplementedError if asked for.
#   5. Imports: torch (only used by the removed branches) and skimage are not imported; the
#      return annotation ``Dataset`` (hmr2.datasets.dataset) is an alias of object.
# Everything else is verbatim.
#
# MIT License
#
# Copyright (c) 2023 UC Regents, Shubham Goel
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
# ruff: noqa
import copy
import os
import random
from typing import Any, Dict, List, Tuple

import braceexpand
import cv2
import numpy as np


class CfgNode(dict):  # CHANGED (1): stands in for yacs.config.CfgNode
    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


CORRUPT_KEYS = set()  # CHANGED (2)
Dataset = object  # CHANGED (5)

body_permutation = [0, 1, 5, 6, 7, 2, 3, 4, 8, 12, 13, 14, 9, 10, 11, 16, 15, 18, 17, 22, 23, 24, 19, 20, 21]
extra_permutation = [5, 4, 3, 2, 1, 0, 11, 10, 9, 8, 7, 6, 12, 13, 14, 15, 16, 17, 18]
FLIP_KEYPOINT_PERMUTATION = body_permutation + [25 + i for i in extra_permutation]

DEFAULT_MEAN = 255. * np.array([0.485, 0.456, 0.406])
DEFAULT_STD = 255. * np.array([0.229, 0.224, 0.225])
DEFAULT_IMG_SIZE = 256


# --- hmr2/datasets/utils.py ---
def expand_to_aspect_ratio(input_shape, target_aspect_ratio=None):
    """Increase the size of the bounding box to match the target shape."""
    if target_aspect_ratio is None:
        return input_shape

    try:
        w , h = input_shape
    except (ValueError, TypeError):
        return input_shape

    w_t, h_t = target_aspect_ratio
    if h / w < h_t / w_t:
        h_new = max(w * h_t / w_t, h)
        w_new = w
    else:
        h_new = h
        w_new = max(h * w_t / h_t, w)
    if h_new < h or w_new < w:
        breakpoint()
    return np.array([w_new, h_new])

def do_augmentation(aug_config: CfgNode) -> Tuple:
    """
    Compute random augmentation parameters.
    Args:
        aug_config (CfgNode): Config containing augmentation parameters.
    Returns:
        scale (float): Box rescaling factor.
        rot (float): Random image rotation.
        do_flip (bool): Whether to flip image or not.
        do_extreme_crop (bool): Whether to apply extreme cropping (as proposed in EFT).
        color_scale (List): Color rescaling factor
        tx (float): Random translation along the x axis.
        ty (float): Random translation along the y axis. 
    """

    tx = np.clip(np.random.randn(), -1.0, 1.0) * aug_config.TRANS_FACTOR
    ty = np.clip(np.random.randn(), -1.0, 1.0) * aug_config.TRANS_FACTOR
    scale = np.clip(np.random.randn(), -1.0, 1.0) * aug_config.SCALE_FACTOR + 1.0
    rot = np.clip(np.random.randn(), -2.0,
                  2.0) * aug_config.ROT_FACTOR if random.random() <= aug_config.ROT_AUG_RATE else 0
    do_flip = aug_config.DO_FLIP and random.random() <= aug_config.FLIP_AUG_RATE
    do_extreme_crop = random.random() <= aug_config.EXTREME_CROP_AUG_RATE
    extreme_crop_lvl = aug_config.get('EXTREME_CROP_AUG_LEVEL', 0)
    # extreme_crop_lvl = 0
    c_up = 1.0 + aug_config.COLOR_SCALE
    c_low = 1.0 - aug_config.COLOR_SCALE
    color_scale = [random.uniform(c_low, c_up), random.uniform(c_low, c_up), random.uniform(c_low, c_up)]
    return scale, rot, do_flip, do_extreme_crop, extreme_crop_lvl, color_scale, tx, ty

def rotate_2d(pt_2d: np.array, rot_rad: float) -> np.array:
    """
    Rotate a 2D point on the x-y plane.
    Args:
        pt_2d (np.array): Input 2D point with shape (2,).
        rot_rad (float): Rotation angle
    Returns:
        np.array: Rotated 2D point.
    """
    x = pt_2d[0]
    y = pt_2d[1]
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    xx = x * cs - y * sn
    yy = x * sn + y * cs
    return np.array([xx, yy], dtype=np.float32)

def gen_trans_from_patch_cv(c_x: float, c_y: float,
                            src_width: float, src_height: float,
                            dst_width: float, dst_height: float,
                            scale: float, rot: float) -> np.array:
    """
    Create transformation matrix for the bounding box crop.
    Args:
        c_x (float): Bounding box center x coordinate in the original image.
        c_y (float): Bounding box center y coordinate in the original image.
        src_width (float): Bounding box width.
        src_height (float): Bounding box height.
        dst_width (float): Output box width.
        dst_height (float): Output box height.
        scale (float): Rescaling factor for the bounding box (augmentation).
        rot (float): Random rotation applied to the box.
    Returns:
        trans (np.array): Target geometric transformation.
    """
    # augment size with scale
    src_w = src_width * scale
    src_h = src_height * scale
    src_center = np.zeros(2)
    src_center[0] = c_x
    src_center[1] = c_y
    # augment rotation
    rot_rad = np.pi * rot / 180
    src_downdir = rotate_2d(np.array([0, src_h * 0.5], dtype=np.float32), rot_rad)
    src_rightdir = rotate_2d(np.array([src_w * 0.5, 0], dtype=np.float32), rot_rad)

    dst_w = dst_width
    dst_h = dst_height
    dst_center = np.array([dst_w * 0.5, dst_h * 0.5], dtype=np.float32)
    dst_downdir = np.array([0, dst_h * 0.5], dtype=np.float32)
    dst_rightdir = np.array([dst_w * 0.5, 0], dtype=np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = src_center
    src[1, :] = src_center + src_downdir
    src[2, :] = src_center + src_rightdir

    dst = np.zeros((3, 2), dtype=np.float32)
    dst[0, :] = dst_center
    dst[1, :] = dst_center + dst_downdir
    dst[2, :] = dst_center + dst_rightdir

    trans = cv2.getAffineTransform(np.float32(src), np.float32(dst))

    return trans

def trans_point2d(pt_2d: np.array, trans: np.array):
    """
    Transform a 2D point using translation matrix trans.
    Args:
        pt_2d (np.array): Input 2D point with shape (2,).
        trans (np.array): Transformation matrix.
    Returns:
        np.array: Transformed 2D point.
    """
    src_pt = np.array([pt_2d[0], pt_2d[1], 1.]).T
    dst_pt = np.dot(trans, src_pt)
    return dst_pt[0:2]

def generate_image_patch_cv2(img: np.array, c_x: float, c_y: float,
                             bb_width: float, bb_height: float,
                             patch_width: float, patch_height: float,
                             do_flip: bool, scale: float, rot: float,
                             border_mode=cv2.BORDER_CONSTANT, border_value=0) -> Tuple[np.array, np.array]:
    """
    Crop the input image and return the crop and the corresponding transformation matrix.
    Args:
        img (np.array): Input image of shape (H, W, 3)
        c_x (float): Bounding box center x coordinate in the original image.
        c_y (float): Bounding box center y coordinate in the original image.
        bb_width (float): Bounding box width.
        bb_height (float): Bounding box height.
        patch_width (float): Output box width.
        patch_height (float): Output box height.
        do_flip (bool): Whether to flip image or not.
        scale (float): Rescaling factor for the bounding box (augmentation).
        rot (float): Random rotation applied to the box.
    Returns:
        img_patch (np.array): Cropped image patch of shape (patch_height, patch_height, 3)
        trans (np.array): Transformation matrix.
    """

    img_height, img_width, img_channels = img.shape
    if do_flip:
        img = img[:, ::-1, :]
        c_x = img_width - c_x - 1


    trans = gen_trans_from_patch_cv(c_x, c_y, bb_width, bb_height, patch_width, patch_height, scale, rot)

    img_patch = cv2.warpAffine(img, trans, (int(patch_width), int(patch_height)), 
                        flags=cv2.INTER_LINEAR, 
                        borderMode=border_mode,
                        borderValue=border_value,
                )
    # Force borderValue=cv2.BORDER_CONSTANT for alpha channel
    if (img.shape[2] == 4) and (border_mode != cv2.BORDER_CONSTANT):
        img_patch[:,:,3] = cv2.warpAffine(img[:,:,3], trans, (int(patch_width), int(patch_height)), 
                                            flags=cv2.INTER_LINEAR, 
                                            borderMode=cv2.BORDER_CONSTANT,
                            )

    return img_patch, trans

def convert_cvimg_to_tensor(cvimg: np.array):
    """
    Convert image from HWC to CHW format.
    Args:
        cvimg (np.array): Image of shape (H, W, 3) as loaded by OpenCV.
    Returns:
        np.array: Output image of shape (3, H, W).
    """
    # from h,w,c(OpenCV) to c,h,w
    img = cvimg.copy()
    img = np.transpose(img, (2, 0, 1))
    # from int to float
    img = img.astype(np.float32)
    return img

def fliplr_params(smpl_params: Dict, has_smpl_params: Dict) -> Tuple[Dict, Dict]:
    """
    Flip SMPL parameters when flipping the image.
    Args:
        smpl_params (Dict): SMPL parameter annotations.
        has_smpl_params (Dict): Whether SMPL annotations are valid.
    Returns:
        Dict, Dict: Flipped SMPL parameters and valid flags.
    """
    global_orient = smpl_params['global_orient'].copy()
    body_pose = smpl_params['body_pose'].copy()
    betas = smpl_params['betas'].copy()
    has_global_orient = has_smpl_params['global_orient'].copy()
    has_body_pose = has_smpl_params['body_pose'].copy()
    has_betas = has_smpl_params['betas'].copy()

    body_pose_permutation = [6, 7, 8, 3, 4, 5, 9, 10, 11, 15, 16, 17, 12, 13,
                             14 ,18, 19, 20, 24, 25, 26, 21, 22, 23, 27, 28, 29, 33,
                             34, 35, 30, 31, 32, 36, 37, 38, 42, 43, 44, 39, 40, 41,
                             45, 46, 47, 51, 52, 53, 48, 49, 50, 57, 58, 59, 54, 55,
                             56, 63, 64, 65, 60, 61, 62, 69, 70, 71, 66, 67, 68]
    body_pose_permutation = body_pose_permutation[:len(body_pose)]
    body_pose_permutation = [i-3 for i in body_pose_permutation]

    body_pose = body_pose[body_pose_permutation]

    global_orient[1::3] *= -1
    global_orient[2::3] *= -1
    body_pose[1::3] *= -1
    body_pose[2::3] *= -1

    smpl_params = {'global_orient': global_orient.astype(np.float32),
                   'body_pose': body_pose.astype(np.float32),
                   'betas': betas.astype(np.float32)
                  }

    has_smpl_params = {'global_orient': has_global_orient,
                       'body_pose': has_body_pose,
                       'betas': has_betas
                      }

    return smpl_params, has_smpl_params

def fliplr_keypoints(joints: np.array, width: float, flip_permutation: List[int]) -> np.array:
    """
    Flip 2D or 3D keypoints.
    Args:
        joints (np.array): Array of shape (N, 3) or (N, 4) containing 2D or 3D keypoint locations and confidence.
        flip_permutation (List): Permutation to apply after flipping.
    Returns:
        np.array: Flipped 2D or 3D keypoints with shape (N, 3) or (N, 4) respectively.
    """
    joints = joints.copy()
    # Flip horizontal
    joints[:, 0] = width - joints[:, 0] - 1
    joints = joints[flip_permutation, :]

    return joints

def keypoint_3d_processing(keypoints_3d: np.array, flip_permutation: List[int], rot: float, do_flip: float) -> np.array:
    """
    Process 3D keypoints (rotation/flipping).
    Args:
        keypoints_3d (np.array): Input array of shape (N, 4) containing the 3D keypoints and confidence.
        flip_permutation (List): Permutation to apply after flipping.
        rot (float): Random rotation applied to the keypoints.
        do_flip (bool): Whether to flip keypoints or not.
    Returns:
        np.array: Transformed 3D keypoints with shape (N, 4).
    """
    if do_flip:
        keypoints_3d = fliplr_keypoints(keypoints_3d, 1, flip_permutation)
    # in-plane rotation
    rot_mat = np.eye(3)
    if not rot == 0:
        rot_rad = -rot * np.pi / 180
        sn,cs = np.sin(rot_rad), np.cos(rot_rad)
        rot_mat[0,:2] = [cs, -sn]
        rot_mat[1,:2] = [sn, cs]
    keypoints_3d[:, :-1] = np.einsum('ij,kj->ki', rot_mat, keypoints_3d[:, :-1])
    # flip the x coordinates
    keypoints_3d = keypoints_3d.astype('float32')
    return keypoints_3d

def rot_aa(aa: np.array, rot: float) -> np.array:
    """
    Rotate axis angle parameters.
    Args:
        aa (np.array): Axis-angle vector of shape (3,).
        rot (np.array): Rotation angle in degrees.
    Returns:
        np.array: Rotated axis-angle vector.
    """
    # pose parameters
    R = np.array([[np.cos(np.deg2rad(-rot)), -np.sin(np.deg2rad(-rot)), 0],
                  [np.sin(np.deg2rad(-rot)), np.cos(np.deg2rad(-rot)), 0],
                  [0, 0, 1]])
    # find the rotation of the body in camera frame
    per_rdg, _ = cv2.Rodrigues(aa)
    # apply the global rotation to the global orientation
    resrot, _ = cv2.Rodrigues(np.dot(R,per_rdg))
    aa = (resrot.T)[0]
    return aa.astype(np.float32)

def smpl_param_processing(smpl_params: Dict, has_smpl_params: Dict, rot: float, do_flip: bool) -> Tuple[Dict, Dict]:
    """
    Apply random augmentations to the SMPL parameters.
    Args:
        smpl_params (Dict): SMPL parameter annotations.
        has_smpl_params (Dict): Whether SMPL annotations are valid.
        rot (float): Random rotation applied to the keypoints.
        do_flip (bool): Whether to flip keypoints or not.
    Returns:
        Dict, Dict: Transformed SMPL parameters and valid flags.
    """
    if do_flip:
        smpl_params, has_smpl_params = fliplr_params(smpl_params, has_smpl_params)
    smpl_params['global_orient'] = rot_aa(smpl_params['global_orient'], rot)
    return smpl_params, has_smpl_params

def get_example(img_path: str|np.ndarray, center_x: float, center_y: float,
                width: float, height: float,
                keypoints_2d: np.array, keypoints_3d: np.array,
                smpl_params: Dict, has_smpl_params: Dict,
                flip_kp_permutation: List[int],
                patch_width: int, patch_height: int,
                mean: np.array, std: np.array,
                do_augment: bool, augm_config: CfgNode,
                is_bgr: bool = True,
                use_skimage_antialias: bool = False,
                border_mode: int = cv2.BORDER_CONSTANT,
                return_trans: bool = False) -> Tuple:
    """
    Get an example from the dataset and (possibly) apply random augmentations.
    Args:
        img_path (str): Image filename
        center_x (float): Bounding box center x coordinate in the original image.
        center_y (float): Bounding box center y coordinate in the original image.
        width (float): Bounding box width.
        height (float): Bounding box height.
        keypoints_2d (np.array): Array with shape (N,3) containing the 2D keypoints in the original image coordinates.
        keypoints_3d (np.array): Array with shape (N,4) containing the 3D keypoints.
        smpl_params (Dict): SMPL parameter annotations.
        has_smpl_params (Dict): Whether SMPL annotations are valid.
        flip_kp_permutation (List): Permutation to apply to the keypoints after flipping.
        patch_width (float): Output box width.
        patch_height (float): Output box height.
        mean (np.array): Array of shape (3,) containing the mean for normalizing the input image.
        std (np.array): Array of shape (3,) containing the std for normalizing the input image.
        do_augment (bool): Whether to apply data augmentation or not.
        aug_config (CfgNode): Config containing augmentation parameters.
    Returns:
        return img_patch, keypoints_2d, keypoints_3d, smpl_params, has_smpl_params, img_size
        img_patch (np.array): Cropped image patch of shape (3, patch_height, patch_height)
        keypoints_2d (np.array): Array with shape (N,3) containing the transformed 2D keypoints.
        keypoints_3d (np.array): Array with shape (N,4) containing the transformed 3D keypoints.
        smpl_params (Dict): Transformed SMPL parameters.
        has_smpl_params (Dict): Valid flag for transformed SMPL parameters.
        img_size (np.array): Image size of the original image.
        """
    if isinstance(img_path, str):
        # 1. load image
        cvimg = cv2.imread(img_path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if not isinstance(cvimg, np.ndarray):
            raise IOError("Fail to read %s" % img_path)
    elif isinstance(img_path, np.ndarray):
        cvimg = img_path
    else:
        raise TypeError('img_path must be either a string or a numpy array')
    img_height, img_width, img_channels = cvimg.shape

    img_size = np.array([img_height, img_width])

    # 2. get augmentation params
    if do_augment:
        scale, rot, do_flip, do_extreme_crop, extreme_crop_lvl, color_scale, tx, ty = do_augmentation(augm_config)
    else:
        scale, rot, do_flip, do_extreme_crop, extreme_crop_lvl, color_scale, tx, ty = 1.0, 0, False, False, 0, [1.0, 1.0, 1.0], 0., 0.

    if width < 1 or height < 1:
        breakpoint()

    if do_extreme_crop:  # CHANGED (4): EFT extreme cropping removed
        raise NotImplementedError("extreme cropping is not vendored; set EXTREME_CROP_AUG_RATE: 0")

    center_x += width * tx
    center_y += height * ty

    # Process 3D keypoints
    keypoints_3d = keypoint_3d_processing(keypoints_3d, flip_kp_permutation, rot, do_flip)

    # 3. generate image patch
    if use_skimage_antialias:  # CHANGED (4): skimage antialiasing removed
        raise NotImplementedError("skimage antialiasing is not vendored")

    img_patch_cv, trans = generate_image_patch_cv2(cvimg,
                                                    center_x, center_y,
                                                    width, height,
                                                    patch_width, patch_height,
                                                    do_flip, scale, rot, 
                                                    border_mode=border_mode)
        # img_patch_cv, trans = generate_image_patch_skimage(cvimg,
        #                                                 center_x, center_y,
        #                                                 width, height,
        #                                                 patch_width, patch_height,
        #                                                 do_flip, scale, rot, 
        #                                                 border_mode=border_mode)

    image = img_patch_cv.copy()
    if is_bgr:
        image = image[:, :, ::-1]
    img_patch_cv = image.copy()
    img_patch = convert_cvimg_to_tensor(image)


    smpl_params, has_smpl_params = smpl_param_processing(smpl_params, has_smpl_params, rot, do_flip)

    # apply normalization
    for n_c in range(min(img_channels, 3)):
        img_patch[n_c, :, :] = np.clip(img_patch[n_c, :, :] * color_scale[n_c], 0, 255)
        if mean is not None and std is not None:
            img_patch[n_c, :, :] = (img_patch[n_c, :, :] - mean[n_c]) / std[n_c]
    if do_flip:
        keypoints_2d = fliplr_keypoints(keypoints_2d, img_width, flip_kp_permutation)


    for n_jt in range(len(keypoints_2d)):
        keypoints_2d[n_jt, 0:2] = trans_point2d(keypoints_2d[n_jt, 0:2], trans)
    keypoints_2d[:, :-1] = keypoints_2d[:, :-1] / patch_width - 0.5

    if not return_trans:
        return img_patch, keypoints_2d, keypoints_3d, smpl_params, has_smpl_params, img_size
    else:
        return img_patch, keypoints_2d, keypoints_3d, smpl_params, has_smpl_params, img_size, trans

# --- hmr2/datasets/image_dataset.py ---
def expand(s):
    return os.path.expanduser(os.path.expandvars(s))

def expand_urls(urls: str|List[str]):
    if isinstance(urls, str):
        urls = [urls]
    urls = [u for url in urls for u in braceexpand.braceexpand(expand(url))]
    return urls

# CHANGED (2): a module function (was ImageDataset's static method)
def load_tars_as_webdataset(cfg: CfgNode, urls: str|List[str], train: bool,
        resampled=False,
        epoch_size=None,
        cache_dir=None,
        **kwargs) -> Dataset:
    """
    Loads the dataset from a webdataset tar file.
    """

    IMG_SIZE = cfg.MODEL.IMAGE_SIZE
    BBOX_SHAPE = cfg.MODEL.get('BBOX_SHAPE', None)
    MEAN = 255. * np.array(cfg.MODEL.IMAGE_MEAN)
    STD = 255. * np.array(cfg.MODEL.IMAGE_STD)

    def split_data(source):
        for item in source:
            datas = item['data.pyd']
            for data in datas:
                if 'detection.npz' in item:
                    det_idx = data['extra_info']['detection_npz_idx']
                    mask = item['detection.npz']['masks'][det_idx]
                else:
                    mask = np.ones_like(item['jpg'][:,:,0], dtype=bool)
                yield {
                    '__key__': item['__key__'],
                    'jpg': item['jpg'],
                    'data.pyd': data,
                    'mask': mask,
                }

    def suppress_bad_kps(item, thresh=0.0):
        if thresh > 0:
            kp2d = item['data.pyd']['keypoints_2d']
            kp2d_conf = np.where(kp2d[:, 2] < thresh, 0.0, kp2d[:, 2])
            item['data.pyd']['keypoints_2d'] = np.concatenate([kp2d[:,:2], kp2d_conf[:,None]], axis=1)
        return item

    def filter_numkp(item, numkp=4, thresh=0.0):
        kp_conf = item['data.pyd']['keypoints_2d'][:, 2]
        return (kp_conf > thresh).sum() > numkp

    def filter_reproj_error(item, thresh=10**4.5):
        losses = item['data.pyd'].get('extra_info', {}).get('fitting_loss', np.array({})).item()
        reproj_loss = losses.get('reprojection_loss', None)
        return reproj_loss is None or reproj_loss < thresh

    def filter_bbox_size(item, thresh=1):
        bbox_size_min = item['data.pyd']['scale'].min().item() * 200.
        return bbox_size_min > thresh

    def filter_no_poses(item):
        return (item['data.pyd']['has_body_pose'] > 0)

    def supress_bad_betas(item, thresh=3):
        has_betas = item['data.pyd']['has_betas']
        if thresh > 0 and has_betas:
            betas_abs = np.abs(item['data.pyd']['betas'])
            if (betas_abs > thresh).any():
                item['data.pyd']['has_betas'] = False
        return item

    def supress_bad_poses(item):  # CHANGED (3): needs 4D-Humans' AMASS pose histogram file
        raise NotImplementedError("SUPPRESS_BAD_POSES needs 4D-Humans' AMASS histogram; not vendored")

    def poses_betas_simultaneous(item):
        # We either have both body_pose and betas, or neither
        has_betas = item['data.pyd']['has_betas']
        has_body_pose = item['data.pyd']['has_body_pose']
        item['data.pyd']['has_betas'] = item['data.pyd']['has_body_pose'] = np.array(float((has_body_pose>0) and (has_betas>0)))
        return item

    def set_betas_for_reg(item):
        # Always have betas set to true
        has_betas = item['data.pyd']['has_betas']
        betas = item['data.pyd']['betas']

        if not (has_betas>0):
            item['data.pyd']['has_betas'] = np.array(float((True)))
            item['data.pyd']['betas'] = betas * 0
        return item

    # Load the dataset
    if epoch_size is not None:
        resampled = True
    corrupt_filter = lambda sample: (sample['__key__'] not in CORRUPT_KEYS)
    import webdataset as wds
    dataset = wds.WebDataset(expand_urls(urls),
                            nodesplitter=wds.split_by_node,
                            shardshuffle=True,
                            resampled=resampled,
                            cache_dir=cache_dir,
                          ).select(corrupt_filter)
    if train:
        dataset = dataset.shuffle(100)
    dataset = dataset.decode('rgb8').rename(jpg='jpg;jpeg;png')

    # Process the dataset
    dataset = dataset.compose(split_data)

    # Filter/clean the dataset
    SUPPRESS_KP_CONF_THRESH = cfg.DATASETS.get('SUPPRESS_KP_CONF_THRESH', 0.0)
    SUPPRESS_BETAS_THRESH = cfg.DATASETS.get('SUPPRESS_BETAS_THRESH', 0.0)
    SUPPRESS_BAD_POSES = cfg.DATASETS.get('SUPPRESS_BAD_POSES', False)
    POSES_BETAS_SIMULTANEOUS = cfg.DATASETS.get('POSES_BETAS_SIMULTANEOUS', False)
    BETAS_REG = cfg.DATASETS.get('BETAS_REG', False)
    FILTER_NO_POSES = cfg.DATASETS.get('FILTER_NO_POSES', False)
    FILTER_NUM_KP = cfg.DATASETS.get('FILTER_NUM_KP', 4)
    FILTER_NUM_KP_THRESH = cfg.DATASETS.get('FILTER_NUM_KP_THRESH', 0.0)
    FILTER_REPROJ_THRESH = cfg.DATASETS.get('FILTER_REPROJ_THRESH', 0.0)
    FILTER_MIN_BBOX_SIZE = cfg.DATASETS.get('FILTER_MIN_BBOX_SIZE', 0.0)
    if SUPPRESS_KP_CONF_THRESH > 0:
        dataset = dataset.map(lambda x: suppress_bad_kps(x, thresh=SUPPRESS_KP_CONF_THRESH))
    if SUPPRESS_BETAS_THRESH > 0:
        dataset = dataset.map(lambda x: supress_bad_betas(x, thresh=SUPPRESS_BETAS_THRESH))
    if SUPPRESS_BAD_POSES:
        dataset = dataset.map(lambda x: supress_bad_poses(x))
    if POSES_BETAS_SIMULTANEOUS:
        dataset = dataset.map(lambda x: poses_betas_simultaneous(x))
    if FILTER_NO_POSES:
        dataset = dataset.select(lambda x: filter_no_poses(x))
    if FILTER_NUM_KP > 0:
        dataset = dataset.select(lambda x: filter_numkp(x, numkp=FILTER_NUM_KP, thresh=FILTER_NUM_KP_THRESH))
    if FILTER_REPROJ_THRESH > 0:
        dataset = dataset.select(lambda x: filter_reproj_error(x, thresh=FILTER_REPROJ_THRESH))
    if FILTER_MIN_BBOX_SIZE > 0:
        dataset = dataset.select(lambda x: filter_bbox_size(x, thresh=FILTER_MIN_BBOX_SIZE))
    if BETAS_REG:
        dataset = dataset.map(lambda x: set_betas_for_reg(x))       # NOTE: Must be at the end

    use_skimage_antialias = cfg.DATASETS.get('USE_SKIMAGE_ANTIALIAS', False)
    border_mode = {
        'constant': cv2.BORDER_CONSTANT,
        'replicate': cv2.BORDER_REPLICATE,
    }[cfg.DATASETS.get('BORDER_MODE', 'constant')]

    # Process the dataset further
    dataset = dataset.map(lambda x: process_webdataset_tar_item(x, train,  # CHANGED (2)
                                                    augm_config=cfg.DATASETS.CONFIG,
                                                    MEAN=MEAN, STD=STD, IMG_SIZE=IMG_SIZE,
                                                    BBOX_SHAPE=BBOX_SHAPE,
                                                    use_skimage_antialias=use_skimage_antialias,
                                                    border_mode=border_mode,
                                                    ))
    if epoch_size is not None:
        dataset = dataset.with_epoch(epoch_size)

    return dataset

# CHANGED (2): a module function (was ImageDataset's static method)
def process_webdataset_tar_item(item, train, 
                                augm_config=None, 
                                MEAN=DEFAULT_MEAN, 
                                STD=DEFAULT_STD, 
                                IMG_SIZE=DEFAULT_IMG_SIZE,
                                BBOX_SHAPE=None,
                                use_skimage_antialias=False,
                                border_mode=cv2.BORDER_CONSTANT,
                                ):
    # Read data from item
    key = item['__key__']
    image = item['jpg']
    data = item['data.pyd']
    mask = item['mask']

    keypoints_2d = data['keypoints_2d']
    keypoints_3d = data['keypoints_3d']
    center = data['center']
    scale = data['scale']
    body_pose = data['body_pose']
    betas = data['betas']
    has_body_pose = data['has_body_pose']
    has_betas = data['has_betas']
    # image_file = data['image_file']

    # Process data
    orig_keypoints_2d = keypoints_2d.copy()
    center_x = center[0]
    center_y = center[1]
    bbox_size = expand_to_aspect_ratio(scale*200, target_aspect_ratio=BBOX_SHAPE).max()
    if bbox_size < 1:
        breakpoint()


    smpl_params = {'global_orient': body_pose[:3],
                'body_pose': body_pose[3:],
                'betas': betas
                }

    has_smpl_params = {'global_orient': has_body_pose,
                    'body_pose': has_body_pose,
                    'betas': has_betas
                    }

    smpl_params_is_axis_angle = {'global_orient': True,
                                'body_pose': True,
                                'betas': False
                                }

    augm_config = copy.deepcopy(augm_config)
    # Crop image and (possibly) perform data augmentation
    img_rgba = np.concatenate([image, mask.astype(np.uint8)[:,:,None]*255], axis=2)
    img_patch_rgba, keypoints_2d, keypoints_3d, smpl_params, has_smpl_params, img_size, trans = get_example(img_rgba,
                                                                                                center_x, center_y,
                                                                                                bbox_size, bbox_size,
                                                                                                keypoints_2d, keypoints_3d,
                                                                                                smpl_params, has_smpl_params,
                                                                                                FLIP_KEYPOINT_PERMUTATION,
                                                                                                IMG_SIZE, IMG_SIZE,
                                                                                                MEAN, STD, train, augm_config,
                                                                                                is_bgr=False, return_trans=True,
                                                                                                use_skimage_antialias=use_skimage_antialias,
                                                                                                border_mode=border_mode,
                                                                                                )
    img_patch = img_patch_rgba[:3,:,:]
    mask_patch = (img_patch_rgba[3,:,:] / 255.0).clip(0,1)
    if (mask_patch < 0.5).all():
        mask_patch = np.ones_like(mask_patch)

    item = {}

    item['img'] = img_patch
    item['mask'] = mask_patch
    # item['img_og'] = image
    # item['mask_og'] = mask
    item['keypoints_2d'] = keypoints_2d.astype(np.float32)
    item['keypoints_3d'] = keypoints_3d.astype(np.float32)
    item['orig_keypoints_2d'] = orig_keypoints_2d
    item['box_center'] = center.copy()
    item['box_size'] = bbox_size
    item['img_size'] = 1.0 * img_size[::-1].copy()
    item['smpl_params'] = smpl_params
    item['has_smpl_params'] = has_smpl_params
    item['smpl_params_is_axis_angle'] = smpl_params_is_axis_angle
    item['_scale'] = scale
    item['_trans'] = trans
    item['imgname'] = key
    # item['idx'] = idx
    return item

