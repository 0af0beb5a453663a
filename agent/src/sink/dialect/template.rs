//! Body templates for every other target (Telegram, ntfy, Gotify, Teams workflows,
//! ...): a template string or file rendered per event with
//! [minijinja](https://docs.rs/minijinja) (Jinja2 syntax, by the author of Jinja2;
//! errors with line numbers; no code execution). Undefined values are errors, and a
//! template is rendered at start against a real example of every event its webhook
//! receives ([`crate::events::samples`]), so a template that cannot render one is a
//! configuration error naming the webhook and the line.
//!
//! The context: the canonical event's fields (`id`, `timestamp`, `node`, `event`,
//! `entity`, `identifier`, `payload`), `kind` (`entity.event`), `text` (the one-line
//! sentence chat dialects send), `peer` ("alice-laptop (LXYw72SS…)"), `extra` (the
//! webhook's `extra_fields`, also at the top level), and the filter `tojson`.

use serde_json::Value;

use super::text::{peer_label, sentence};
use super::{kind, Encoded};

/// A compiled template.
#[derive(Debug)]
pub struct Template {
    env: minijinja::Environment<'static>,
    content_type: String,
}

/// A template that does not compile or render: the line (1-based) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("template line {line}: {message}")]
pub struct TemplateError {
    /// 1-based line in the template.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

fn template_error(err: &minijinja::Error) -> TemplateError {
    TemplateError {
        line: err.line().unwrap_or(1),
        message: match err.detail() {
            Some(detail) => format!("{}: {detail}", err.kind()),
            None => err.kind().to_string(),
        },
    }
}

/// The template of a webhook (inline, or read from `template_file`), compiled;
/// `None` for other dialects.
pub fn load(config: &crate::sink::config::WebhookConfig) -> Result<Option<Template>, String> {
    let source = match (&config.template, &config.template_file) {
        (Some(inline), _) => inline.clone(),
        (None, Some(path)) => {
            std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?
        }
        (None, None) => return Ok(None),
    };
    let content_type = config
        .template_content_type
        .clone()
        .unwrap_or_else(|| "application/json".into());
    Template::new(source, content_type)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// The variables a template sees for `event`.
pub fn context(event: &Value, extra: &serde_json::Map<String, Value>) -> Value {
    let mut context = serde_json::Map::new();
    for (key, value) in extra {
        context.insert(key.clone(), value.clone());
    }
    if let Value::Object(fields) = event {
        for (key, value) in fields {
            context.insert(key.clone(), value.clone());
        }
    }
    let key = event["identifier"].as_str().unwrap_or_default();
    let model = if event["entity"] == "peer" {
        &event["payload"]
    } else {
        &event["payload"]["Peer"]
    };
    context.insert("kind".into(), Value::String(kind(event)));
    context.insert("text".into(), Value::String(sentence(event)));
    context.insert("peer".into(), Value::String(peer_label(model, key)));
    context.insert("extra".into(), Value::Object(extra.clone()));
    Value::Object(context)
}

impl Template {
    /// Compiles `source`; `content_type` is the body's content type.
    pub fn new(source: String, content_type: String) -> Result<Self, TemplateError> {
        let mut env = minijinja::Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        env.add_template_owned("body", source)
            .map_err(|e| template_error(&e))?;
        Ok(Self { env, content_type })
    }

    /// Renders the body for `event`.
    pub fn render(
        &self,
        event: &Value,
        extra: &serde_json::Map<String, Value>,
    ) -> Result<String, TemplateError> {
        let template = self
            .env
            .get_template("body")
            .map_err(|e| template_error(&e))?;
        template
            .render(context(event, extra))
            .map_err(|e| template_error(&e))
    }

    /// Renders every event in `samples`: the first that fails is the error.
    pub fn check(
        &self,
        samples: &[Value],
        extra: &serde_json::Map<String, Value>,
    ) -> Result<(), (String, TemplateError)> {
        for event in samples {
            self.render(event, extra).map_err(|e| (kind(event), e))?;
        }
        Ok(())
    }

    /// The request body for one event. A template that fails on an event it was not
    /// checked against (one outside the samples) sends the event's sentence instead,
    /// so that nothing is lost to a template.
    pub fn render_event(&self, event: &Value, extra: &serde_json::Map<String, Value>) -> Encoded {
        let body = match self.render(event, extra) {
            Ok(body) => body,
            Err(err) => {
                tracing::warn!(
                    "body template failed ({err}) for {}: sending its sentence",
                    kind(event)
                );
                sentence(event)
            }
        };
        Encoded {
            body: body.into_bytes(),
            content_type: self.content_type.clone(),
            headers: Vec::new(),
        }
    }
}
