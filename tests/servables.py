"""Tiny SavedModels shaped like tfsft's exports, for the serving tests (written once per session by conftest)."""

import base64
import shutil

import tensorflow as tf

PNG_PIXELS = [[[0], [50]], [[100], [250]]]  # mean 100.0


class TextModel(tf.Module):
    """Like an exported classifier: P(long) = min(len/8, 1), so probabilities are exact binary fractions."""

    def __init__(self, names):
        super().__init__()
        self.names = tf.constant(names)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(self, text):
        p_long = tf.minimum(tf.cast(tf.strings.length(text), tf.float32) / 8.0, 1.0)
        probabilities = tf.stack([1.0 - p_long, p_long], axis=-1)
        class_id = tf.argmax(probabilities, axis=-1)
        return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(self.names, class_id)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def lengths(self, text):
        return {"length": tf.strings.length(text)}


class PairModel(tf.Module):
    @tf.function(
        input_signature=[tf.TensorSpec([None, 2], tf.float32, name="a"), tf.TensorSpec([None], tf.float32, name="b")]
    )
    def serve(self, a, b):
        return {"total": tf.reduce_sum(a, axis=-1) + b}


class ImageModel(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serve(self, image_bytes):
        def mean_pixel(png):
            return tf.reduce_mean(tf.cast(tf.io.decode_png(png), tf.float32))

        return {
            "mean": tf.map_fn(mean_pixel, image_bytes, fn_output_signature=tf.float32),
            "thumbnail_bytes": image_bytes,
        }


def save_text_model(path, names):
    module = TextModel(names)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve, "lengths": module.lengths})


def save_pair_model(path):
    module = PairModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def save_image_model(path):
    module = ImageModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_warmup_file(version_dir, model_name):
    """TF Serving's assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLog protos."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=model_name))
    request.inputs["text"].CopyFrom(tf.make_tensor_proto([b"warm", b"up"]))
    record = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    (version_dir / "assets.extra").mkdir(exist_ok=True)
    with tf.io.TFRecordWriter(str(version_dir / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        writer.write(record.SerializeToString())


def png_b64(pixels=PNG_PIXELS) -> str:
    return base64.b64encode(tf.io.encode_png(tf.constant(pixels, tf.uint8)).numpy()).decode()


class SlowModel(tf.Module):
    """Sleeps for the longest `seconds` it is given, without using a CPU: a stand-in for a long model call."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="seconds")])
    def serve(self, seconds):
        # TF has no public sleep op; tf.data's test-only sleep transformation is a real graph op that saves.
        from tensorflow.python.data.experimental.ops.testing import sleep

        micros = tf.cast(tf.reduce_max(seconds) * 1e6, tf.int64)
        waited = tf.data.Dataset.range(1).apply(sleep(micros)).reduce(tf.constant(0, tf.int64), lambda a, b: a + b)
        return {"slept": seconds + tf.cast(waited, tf.float32)}


def save_slow_model(path):
    module = SlowModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def write_serving_base(root):
    """Models text (versions 1, 2 with warm-up), pair, image and slow, plus folders that are not versions."""
    save_text_model(root / "text" / "1", ["short", "long"])
    save_text_model(root / "text" / "2", ["SHORT", "LONG"])  # the latest version answers in capitals
    write_warmup_file(root / "text" / "2", "text")
    shutil.copytree(root / "text" / "1", root / "text" / ".tmp-3-abc")  # an export in progress: never served
    (root / "text" / "notes").mkdir()  # not an integer: ignored
    save_pair_model(root / "pair" / "1")
    save_image_model(root / "image" / "7")
    save_slow_model(root / "slow" / "1")
    return root
