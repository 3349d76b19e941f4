//! Inference endpoints over real HTTP against the shipped default model (semi-supervised, MNIST)
//! and a small unconditional model trained in the test.

mod common;

use std::io::Cursor;

use base64::Engine;
use common::{client, test_digits, Server, ServerOptions};
use reqwest::blocking::multipart;
use serde_json::{json, Value};

const SHIPPED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models");

fn shipped_server(env: Vec<(String, String)>) -> Server {
    let server =
        Server::start(ServerOptions { models_dir: Some(SHIPPED.into()), default_model: "mnist-ssvae".into(), env, ..Default::default() });
    server.wait_ready();
    server
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn problem(response: reqwest::blocking::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json::<Value>().unwrap()["detail"].as_str().unwrap().to_string()
}

#[test]
fn classification_of_the_shipped_model_is_accurate_over_http_in_every_input_form() {
    let server = shipped_server(vec![]);
    let http = client();
    let digits = test_digits(500);

    // 500 test digits, 50 per JSON request.
    let mut correct = 0;
    for chunk in digits.chunks(50) {
        let body = json!({ "images": chunk.iter().map(|(png, _)| b64(png)).collect::<Vec<_>>() });
        let answer: Value = http.post(server.url("/classify")).json(&body).send().unwrap().json().unwrap();
        for ((_, label), result) in chunk.iter().zip(answer["results"].as_array().unwrap()) {
            correct += (result["label"].as_i64().unwrap() == *label) as usize;
            let total: f64 = result["probabilities"].as_object().unwrap().values().map(|p| p.as_f64().unwrap()).sum();
            assert!((total - 1.0).abs() < 1e-4);
        }
    }
    let accuracy = correct as f64 / 500.0;
    assert!(accuracy >= 0.90, "accuracy {accuracy} on 500 MNIST test digits");

    // The same digit through a raw body, multipart (two images) and a data-URL JSON body.
    let (png, label) = &digits[0];
    let raw: Value =
        http.post(server.url("/classify")).header("content-type", "image/png").body(png.clone()).send().unwrap().json().unwrap();
    let form = multipart::Form::new()
        .part("image", multipart::Part::bytes(png.clone()).file_name("a.png"))
        .part("image", multipart::Part::bytes(digits[1].0.clone()).file_name("b.png"));
    let multi: Value = http.post(server.url("/classify")).multipart(form).send().unwrap().json().unwrap();
    let data_url: Value = http
        .post(server.url("/classify"))
        .json(&json!({ "images": [format!("data:image/png;base64,{}", b64(png))] }))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(multi["results"].as_array().unwrap().len(), 2);
    for answer in [&raw, &multi, &data_url] {
        assert_eq!(answer["model"], "mnist-ssvae@5");
        assert_eq!(answer["results"][0]["label"], raw["results"][0]["label"]);
        assert_eq!(answer["results"][0]["probability"], raw["results"][0]["probability"], "same input, same answer in any form");
    }
    assert_eq!(raw["results"][0]["label"].as_i64().unwrap(), *label);
    assert_eq!(raw["results"][0]["name"], label.to_string());
    assert_eq!(
        raw["results"][0]["conversion"],
        json!({"format": "png", "original_width": 28, "original_height": 28, "resized": false, "colour_converted": false})
    );

    // Colour and size are converted, and the answer says so.
    let big = image::DynamicImage::ImageLuma8(image::load_from_memory(png).unwrap().to_luma8())
        .resize_exact(56, 56, image::imageops::FilterType::Triangle)
        .to_rgb8();
    let mut big_png = Cursor::new(Vec::new());
    big.write_to(&mut big_png, image::ImageFormat::Png).unwrap();
    let converted: Value =
        http.post(server.url("/classify")).header("content-type", "image/png").body(big_png.into_inner()).send().unwrap().json().unwrap();
    assert_eq!(converted["results"][0]["conversion"]["resized"], true);
    assert_eq!(converted["results"][0]["conversion"]["colour_converted"], true);
    assert_eq!(converted["results"][0]["label"].as_i64().unwrap(), *label);
}

#[test]
fn reconstructions_resemble_their_inputs_and_encodings_are_batch_independent() {
    let server = shipped_server(vec![]);
    let http = client();
    let digits = test_digits(10);
    let body = json!({ "images": digits.iter().map(|(png, _)| b64(png)).collect::<Vec<_>>() });
    let answer: Value = http.post(server.url("/reconstruct")).json(&body).send().unwrap().json().unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    let pixels = |b64png: &str| -> Vec<f32> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64png).unwrap();
        image::load_from_memory(&bytes).unwrap().to_luma8().into_raw().into_iter().map(|v| v as f32 / 255.0).collect()
    };
    let originals: Vec<Vec<f32>> = digits
        .iter()
        .map(|(png, _)| image::load_from_memory(png).unwrap().to_luma8().into_raw().into_iter().map(|v| v as f32 / 255.0).collect())
        .collect();
    let distance = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>();
    for (i, result) in results.iter().enumerate() {
        let reconstruction = pixels(result["reconstruction"].as_str().unwrap());
        let own = distance(&reconstruction, &originals[i]);
        for (j, other) in originals.iter().enumerate().filter(|(j, _)| *j != i) {
            assert!(own < distance(&reconstruction, other), "reconstruction {i} is closer to digit {j} than to its input");
        }
        let (error, kl, elbo) =
            (result["reconstruction_error"].as_f64().unwrap(), result["kl"].as_f64().unwrap(), result["elbo"].as_f64().unwrap());
        assert!(error > 0.0 && kl > 0.0 && (elbo + error + kl).abs() < 1e-6);
        assert!(elbo > -300.0, "ELBO {elbo} of a test digit");
    }

    // A grid of reconstructions as one PNG.
    let grid = http.post(server.url("/reconstruct?format=png")).json(&body).send().unwrap();
    assert_eq!(grid.headers()["content-type"], "image/png");
    let grid = image::load_from_memory(&grid.bytes().unwrap()).unwrap();
    assert_eq!((grid.width(), grid.height()), (4 * 30 + 2, 3 * 30 + 2));

    // Encoding one image alone equals encoding it among others.
    let together: Value = http.post(server.url("/encode")).json(&body).send().unwrap().json().unwrap();
    let alone: Value =
        http.post(server.url("/encode")).header("content-type", "image/png").body(digits[3].0.clone()).send().unwrap().json().unwrap();
    let close = |a: &Value, b: &Value| {
        a.as_array().unwrap().iter().zip(b.as_array().unwrap()).all(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-4)
    };
    assert!(close(&alone["results"][0]["mean"], &together["results"][3]["mean"]));
    assert!(close(&alone["results"][0]["log_var"], &together["results"][3]["log_var"]));
    assert_eq!(alone["results"][0]["mean"].as_array().unwrap().len(), 32);
}

#[test]
fn sampling_and_interpolation_by_label_name_and_image() {
    let server = shipped_server(vec![]);
    let http = client();
    let json_samples: Value = http.get(server.url("/sample?label=7&n=4&seed=3&format=json")).send().unwrap().json().unwrap();
    assert_eq!(json_samples["label"], 7);
    assert_eq!(json_samples["label_name"], "7");
    assert_eq!(json_samples["images"].as_array().unwrap().len(), 4);
    assert_eq!(json_samples["latents"][0].as_array().unwrap().len(), 32);
    // The same request through the model-specific routes (the default is the latest version) gives the same codes.
    for path in ["/v1/models/mnist-ssvae/sample", "/v1/models/mnist-ssvae/versions/5/sample", "/v1/models/mnist-ssvae/versions/v5/sample"] {
        let again: Value = http.get(server.url(&format!("{path}?label=7&n=4&seed=3&format=json"))).send().unwrap().json().unwrap();
        assert_eq!(again["latents"], json_samples["latents"], "{path}");
        assert_eq!(again["images"], json_samples["images"], "{path}");
    }
    // Samples of a class are classified as that class by the same model (mostly).
    let samples: Value = http.get(server.url("/sample?label=3&n=32&seed=1&format=json&temperature=0.5")).send().unwrap().json().unwrap();
    let classified: Value =
        http.post(server.url("/classify")).json(&json!({ "images": samples["images"] })).send().unwrap().json().unwrap();
    let threes = classified["results"].as_array().unwrap().iter().filter(|r| r["label"] == 3).count();
    assert!(threes >= 24, "{threes}/32 samples of class 3 are classified as 3");

    let strip = http.get(server.url("/interpolate?from=3&to=8&steps=10")).send().unwrap();
    assert_eq!(strip.status(), 200);
    let strip = image::load_from_memory(&strip.bytes().unwrap()).unwrap();
    assert_eq!((strip.width(), strip.height()), (10 * 30 + 2, 30 + 2));

    let digits = test_digits(2);
    let form = multipart::Form::new()
        .part("image", multipart::Part::bytes(digits[0].0.clone()))
        .part("image", multipart::Part::bytes(digits[1].0.clone()));
    let between: Value = http.post(server.url("/interpolate?steps=5&format=json")).multipart(form).send().unwrap().json().unwrap();
    assert_eq!(between["images"].as_array().unwrap().len(), 5);
    let ends: Value =
        http.post(server.url("/encode")).json(&json!({"images": [b64(&digits[0].0), b64(&digits[1].0)]})).send().unwrap().json().unwrap();
    let first: Vec<f64> = between["latents"][0].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    let start: Vec<f64> = ends["results"][0]["mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(first.iter().zip(&start).all(|(a, b)| (a - b).abs() < 1e-4), "the strip starts at the first image's code");

    assert!(problem(http.get(server.url("/interpolate?from=3")).send().unwrap(), 400).contains("`from` and `to`"));
    let one = multipart::Form::new().part("image", multipart::Part::bytes(digits[0].0.clone()));
    assert!(problem(http.post(server.url("/interpolate")).multipart(one).send().unwrap(), 400).contains("exactly two"));
}

#[test]
fn bad_input_gets_clear_problems_and_never_hurts_the_worker() {
    // A small limit, so the refused body fits in loopback socket buffers (the server answers 413
    // without reading it).
    let server = shipped_server(vec![("VAE_MAX_BODY_BYTES".into(), "50000".into())]);
    let http = client();
    let digit = test_digits(1).remove(0).0;
    let post = |path: &str, content_type: &str, body: Vec<u8>| {
        http.post(server.url(path)).header("content-type", content_type).body(body).send().unwrap()
    };

    assert!(problem(post("/classify", "image/png", b"not a png at all".to_vec()), 415).contains("unsupported"));
    assert!(problem(post("/classify", "text/plain", digit.clone()), 415).contains("text/plain"));
    assert!(problem(http.post(server.url("/classify")).send().unwrap(), 415).contains("(none)"));
    assert!(problem(post("/classify", "image/png", vec![]), 400).contains("no image"));
    let mut truncated = digit.clone();
    truncated.truncate(digit.len() / 2);
    assert!(problem(post("/reconstruct", "image/png", truncated), 400).contains("cannot decode"));
    assert!(
        problem(post("/encode", "application/json", b"{\"images\": [\"%%%\"]}".to_vec()), 400).contains("images[0] is not valid base64")
    );
    assert!(problem(post("/encode", "application/json", b"{\"pictures\": []}".to_vec()), 400).contains("invalid JSON"));
    let too_many = json!({ "images": vec![b64(&digit); 65] });
    assert!(problem(http.post(server.url("/encode")).json(&too_many).send().unwrap(), 400).contains("more than the 64"));
    let form = multipart::Form::new().part("picture", multipart::Part::bytes(digit.clone()));
    assert!(problem(http.post(server.url("/encode")).multipart(form).send().unwrap(), 400).contains("fields named `image`"));
    assert!(problem(post("/encode", "image/png", vec![0u8; 60_000]), 413).contains("VAE_MAX_BODY_BYTES"));
    // An image whose header claims a huge size is refused before decoding.
    let huge = image::GrayImage::new(5000, 1);
    let mut huge_png = Cursor::new(Vec::new());
    huge.write_to(&mut huge_png, image::ImageFormat::Png).unwrap();
    assert!(problem(post("/encode", "image/png", huge_png.into_inner()), 400).contains("exceeds the limit of 4096x4096"));

    assert!(problem(http.get(server.url("/sample?n=0")).send().unwrap(), 400).contains("outside 1..=256"));
    assert!(problem(http.get(server.url("/sample?temperature=-1")).send().unwrap(), 400).contains("temperature"));
    assert!(problem(http.get(server.url("/v1/models/nope/sample")).send().unwrap(), 404).contains("`nope` not found"));
    assert!(problem(http.get(server.url("/v1/models/mnist-ssvae/versions/9/sample")).send().unwrap(), 404).contains("mnist-ssvae@9"));
    assert!(problem(http.get(server.url("/v1/models/mnist-ssvae/versions/x/sample")).send().unwrap(), 400).contains("not a number"));
    assert!(problem(http.get(server.url("/v1/models/..%2Fmodels/sample")).send().unwrap(), 404).contains("model name"));

    // The worker is unharmed: a good request still answers.
    let ok: Value = post("/classify", "image/png", digit).json().unwrap();
    assert!(ok["results"][0]["label"].is_i64());
}

#[test]
fn an_unconditional_model_refuses_labels_and_classification_with_a_pointer() {
    let dir = tempfile::tempdir().unwrap();
    common::run_cli(
        &[
            "train",
            "--dataset",
            "mnist",
            "--architecture",
            "mlp",
            "--name",
            "plain",
            "--epochs",
            "1",
            "--max-train",
            "500",
            "--hidden",
            "32",
            "--latent-dim",
            "4",
        ],
        dir.path(),
    );
    let server =
        Server::start(ServerOptions { models_dir: Some(dir.path().to_path_buf()), default_model: "plain".into(), ..Default::default() });
    server.wait_ready();
    let http = client();
    assert!(problem(http.get(server.url("/sample?label=3")).send().unwrap(), 400).contains("no labels"));
    assert!(problem(http.get(server.url("/interpolate?from=1&to=2")).send().unwrap(), 400).contains("no labels"));
    let digit = test_digits(1).remove(0).0;
    let detail = problem(http.post(server.url("/classify")).header("content-type", "image/png").body(digit.clone()).send().unwrap(), 400);
    assert!(detail.contains("no classifier") && detail.contains("semi-supervised"), "{detail}");
    let encoded: Value = http.post(server.url("/encode")).header("content-type", "image/png").body(digit).send().unwrap().json().unwrap();
    assert_eq!(encoded["results"][0]["mean"].as_array().unwrap().len(), 4);
    assert_eq!(http.get(server.url("/sample?n=4")).send().unwrap().status(), 200);
}

/// What a request to `endpoint` answers for `png`: the numbers that must not depend on batching.
fn answer_numbers(base: &str, endpoint: &str, png: Vec<u8>) -> Vec<f64> {
    let answer: Value =
        client().post(format!("{base}{endpoint}")).header("content-type", "image/png").body(png).send().unwrap().json().unwrap();
    let result = &answer["results"][0];
    match endpoint {
        "/classify" => result["probabilities"].as_object().unwrap().values().map(|p| p.as_f64().unwrap()).collect(),
        "/encode" => {
            result["mean"].as_array().unwrap().iter().chain(result["log_var"].as_array().unwrap()).map(|v| v.as_f64().unwrap()).collect()
        }
        _ => vec![result["elbo"].as_f64().unwrap(), result["kl"].as_f64().unwrap()],
    }
}

#[test]
fn two_hundred_concurrent_requests_are_batched_and_all_answered_correctly() {
    let server = shipped_server(vec![("VAE_MAX_BATCH_DELAY_MS".into(), "5".into())]);
    let digits = test_digits(20);
    let base = server.base.clone();
    // Classification, encoding and reconstruction share batches but need different parts of the model.
    const ENDPOINTS: [&str; 3] = ["/classify", "/encode", "/reconstruct"];
    let endpoint = |i: usize| ENDPOINTS[i % 3];
    // Expected answers, one request at a time.
    let expected: Vec<Vec<f64>> = (0..60).map(|i| answer_numbers(&base, endpoint(i), digits[i % 20].0.clone())).collect();
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let (png, base) = (digits[i % 20].0.clone(), base.clone());
            std::thread::spawn(move || answer_numbers(&base, endpoint(i), png))
        })
        .collect();
    for (i, thread) in threads.into_iter().enumerate() {
        let got = thread.join().unwrap();
        let want = &expected[i % 60];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() < 1e-3 * w.abs().max(1.0),
                "request {i} ({}): batched answer {g} differs from the lone one {w}",
                endpoint(i)
            );
        }
    }
    let http = client();
    let metrics = http.get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    let batches = |le: &str| -> f64 {
        let prefix = format!("vae_inference_batch_size_bucket{{model=\"mnist-ssvae@5\",le=\"{le}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or_else(|| panic!("no {prefix} in\n{metrics}")).parse().unwrap()
    };
    let (single, all) = (batches("1"), batches("+Inf"));
    assert!(all < 260.0, "{all} batches for 260 requests: nothing was batched");
    assert!(all > single, "no batch held more than one request");
    assert!(metrics.contains("vae_inference_requests_total{model=\"mnist-ssvae@5\",outcome=\"ok\"} 260"), "{metrics}");
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_recovers() {
    let server = shipped_server(vec![
        ("VAE_QUEUE_CAPACITY".into(), "1".into()),
        ("VAE_MAX_BATCH_SIZE".into(), "1".into()),
        ("VAE_MAX_BATCH_DELAY_MS".into(), "0".into()),
    ]);
    let base = server.base.clone();
    let threads: Vec<_> = (0..48)
        .map(|seed| {
            let base = base.clone();
            std::thread::spawn(move || {
                let response = client().get(format!("{base}/sample?n=256&seed={seed}")).send().unwrap();
                let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (response.status().as_u16(), retry_after)
            })
        })
        .collect();
    let answers: Vec<(u16, Option<String>)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(answers.iter().all(|(status, _)| *status == 200 || *status == 503), "{answers:?}");
    assert!(answers.iter().any(|(status, _)| *status == 200));
    let rejected: Vec<_> = answers.iter().filter(|(status, _)| *status == 503).collect();
    assert!(!rejected.is_empty(), "48 concurrent large requests never filled a queue of one");
    assert!(rejected.iter().all(|(_, retry)| retry.as_deref() == Some("1")));
    assert_eq!(client().get(format!("{base}/sample?n=4")).send().unwrap().status(), 200, "the service recovers");
    let metrics = client().get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains(&format!("vae_inference_requests_total{{model=\"mnist-ssvae@5\",outcome=\"rejected\"}} {}", rejected.len())));
}

#[test]
fn int8_inference_answers_as_float_does_over_http() {
    let float = shipped_server(vec![]);
    let int8 = shipped_server(vec![("VAE_INFERENCE_INT8".into(), "true".into())]);
    let http = client();
    let digits = test_digits(300);
    let labels = |server: &Server| -> Vec<i64> {
        digits
            .chunks(50)
            .flat_map(|chunk| {
                let body = json!({ "images": chunk.iter().map(|(png, _)| b64(png)).collect::<Vec<_>>() });
                let answer: Value = http.post(server.url("/classify")).json(&body).send().unwrap().json().unwrap();
                answer["results"].as_array().unwrap().iter().map(|r| r["label"].as_i64().unwrap()).collect::<Vec<_>>()
            })
            .collect()
    };
    let (float_labels, int8_labels) = (labels(&float), labels(&int8));
    let agree = float_labels.iter().zip(&int8_labels).filter(|(a, b)| a == b).count();
    assert!(agree >= 297, "int8 and float agree on {agree} of 300 test digits");
    let correct = int8_labels.iter().zip(&digits).filter(|(l, (_, label))| *l == label).count();
    assert!(correct >= 270, "int8 classifies {correct} of 300 test digits correctly");
    let packed_as = |server: &Server, precision: &str| {
        server.log_contains(&format!("\"precision\":\"{precision}\",\"packed\":true"))
            || server.log_contains(&format!("precision={precision} packed=true"))
    };
    assert!(packed_as(&int8, "int8"), "the log says int8 is in effect");
    assert!(packed_as(&float, "float32"), "the log says the float32 layers are folded");
    // Generation and reconstruction run through the quantized decoder and encoder too.
    let sample = http.get(int8.url("/sample?n=4&label=3&seed=1")).send().unwrap();
    assert_eq!(sample.status(), 200);
    let reconstruction = http.post(int8.url("/reconstruct")).header("content-type", "image/png").body(digits[0].0.clone()).send().unwrap();
    assert_eq!(reconstruction.status(), 200);
}
