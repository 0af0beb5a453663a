//! Chat incoming webhooks: Slack's `{"text": ...}` (Mattermost and Rocket.Chat take
//! the same) and Discord's `{"content": ...}` (at most 2000 characters). One line per
//! event ([`super::text::sentence`]); a batch is one message of several lines.

use serde_json::{json, Value};

use super::text::sentence;
use super::{with_extra, Encoded};

/// Discord's limit on `content`.
pub const DISCORD_LIMIT: usize = 2000;

fn lines(events: &[Value]) -> Vec<String> {
    events.iter().map(sentence).collect()
}

/// The Slack message.
pub fn slack(events: &[Value], extra: &serde_json::Map<String, Value>) -> Encoded {
    let text = lines(events).join("\n");
    Encoded::json(&with_extra(json!({ "text": text }), extra), Vec::new())
}

/// The Discord message, cut to [`DISCORD_LIMIT`] characters with a count of the
/// lines left out.
pub fn discord(events: &[Value], extra: &serde_json::Map<String, Value>) -> Encoded {
    let lines = lines(events);
    let mut content = String::new();
    for (i, line) in lines.iter().enumerate() {
        let more = lines.len() - i;
        let tail = format!("\n… and {more} more");
        let needed = content.chars().count() + line.chars().count() + 1;
        if needed + tail.chars().count() > DISCORD_LIMIT && i + 1 < lines.len()
            || needed > DISCORD_LIMIT
        {
            if content.is_empty() {
                content = line.chars().take(DISCORD_LIMIT - 1).collect::<String>() + "…";
            } else {
                content.push_str(&tail);
            }
            break;
        }
        if !content.is_empty() {
            content.push('\n');
        }
        content.push_str(line);
    }
    Encoded::json(
        &with_extra(json!({ "content": content }), extra),
        Vec::new(),
    )
}
