//! One function per operation: decode the request (untrusted JSON), check it as DynamoDB
//! does, read or change a table, answer.

use std::collections::HashMap;
use std::ops::Bound;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use crate::error::{DynamoError, Result};
use crate::expr::{self, Cond, Elem, Path, Subst};
use crate::store::{Db, IndexMeta, Inner, KeyAttr, Table, TableMeta, has_type};
use crate::value::{Item, Key, KeyPart, ScalarType, Value, item_from_json, item_size, item_to_json};

/// Largest item, bytes.
const MAX_ITEM: usize = 400 * 1024;
/// Most data one Scan or Query page reads.
const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Every operation answered, for metrics labels.
pub const KNOWN_OPS: [&str; 12] = [
    "CreateTable",
    "DescribeTable",
    "DeleteTable",
    "ListTables",
    "UpdateTable",
    "GetItem",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "Scan",
    "Query",
];

/// Per-request context.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// Region for ARNs (the request signature's, else the server's default).
    pub region: String,
    /// Now, epoch ms.
    pub now_ms: u64,
}

fn not_null(field: &str) -> DynamoError {
    DynamoError::validation(format!(
        "1 validation error detected: Value null at '{field}' failed to satisfy constraint: Member must not be null"
    ))
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

fn wrong_type(field: &str, want: &str) -> DynamoError {
    DynamoError::serialization(format!("Unexpected value type in payload: {field} expects {want}"))
}

/// A decoded request body.
struct Req<'a>(&'a Map<String, Json>);

impl<'a> Req<'a> {
    fn get(&self, k: &str) -> Option<&'a Json> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s)),
            Some(_) => Err(wrong_type(k, "a string")),
        }
    }

    fn req_str(&self, k: &str) -> Result<&'a str> {
        self.str(k)?.ok_or_else(|| not_null(&lower_first(k)))
    }

    fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Json::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(wrong_type(k, "a boolean")),
        }
    }

    fn int(&self, k: &str) -> Result<Option<i64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| wrong_type(k, "an integer")),
        }
    }

    fn obj(&self, k: &str) -> Result<Option<&'a Map<String, Json>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Json::Object(m)) => Ok(Some(m)),
            Some(_) => Err(wrong_type(k, "a structure")),
        }
    }

    fn arr(&self, k: &str) -> Result<Option<&'a Vec<Json>>> {
        match self.get(k) {
            None => Ok(None),
            Some(Json::Array(a)) => Ok(Some(a)),
            Some(_) => Err(wrong_type(k, "a list")),
        }
    }

    fn item(&self, k: &str) -> Result<Option<Item>> {
        self.get(k).map(item_from_json).transpose()
    }

    fn table_name(&self) -> Result<&'a str> {
        let name = self.req_str("TableName")?;
        check_name(name, "tableName", 3)?;
        Ok(name)
    }

    fn index_name(&self) -> Result<Option<&'a str>> {
        let n = self.str("IndexName")?;
        if let Some(n) = n {
            check_name(n, "indexName", 3)?;
        }
        Ok(n)
    }
}

fn check_name(name: &str, field: &str, min: usize) -> Result<()> {
    let c = |what: String| {
        DynamoError::validation(format!(
            "1 validation error detected: Value '{name}' at '{field}' failed to satisfy constraint: {what}"
        ))
    };
    if name.len() < min {
        return Err(c(format!("Member must have length greater than or equal to {min}")));
    }
    if name.len() > 255 {
        return Err(c("Member must have length less than or equal to 255".into()));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-') {
        return Err(c("Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+".into()));
    }
    Ok(())
}

fn str_field<'a>(m: &'a Map<String, Json>, k: &str, ctx: &str) -> Result<&'a str> {
    match m.get(k) {
        Some(Json::String(s)) => Ok(s),
        None | Some(Json::Null) => Err(not_null(&format!("{ctx}.{}", lower_first(k)))),
        Some(_) => Err(wrong_type(k, "a string")),
    }
}

fn as_obj<'a>(v: &'a Json, what: &str) -> Result<&'a Map<String, Json>> {
    v.as_object().ok_or_else(|| wrong_type(what, "a structure"))
}

impl Db {
    /// Answers one request: `op` is the part of `X-Amz-Target` after `DynamoDB_20120810.`,
    /// `body` the raw JSON. Blocking (file I/O): call it off the async reactor.
    pub fn handle(&self, op: &str, body: &[u8], ctx: &Ctx) -> Result<Json> {
        let parsed: Json = serde_json::from_slice(body)
            .map_err(|e| DynamoError::serialization(format!("Could not parse the request body: {e}")))?;
        let Json::Object(m) = &parsed else {
            return Err(DynamoError::serialization("Start of structure or map found where not expected"));
        };
        let r = Req(m);
        match op {
            "CreateTable" => self.create_table(&r, ctx),
            "DescribeTable" => self.describe_table(&r, ctx),
            "DeleteTable" => self.delete_table(&r, ctx),
            "ListTables" => self.list_tables(&r),
            "UpdateTable" => self.update_table(&r, ctx),
            "GetItem" => self.get_item(&r),
            "PutItem" => self.put_item(&r),
            "UpdateItem" => self.update_item(&r),
            "DeleteItem" => self.delete_item(&r),
            "BatchWriteItem" => self.batch_write_item(&r),
            "Scan" => self.scan(&r),
            "Query" => self.query(&r),
            other => Err(DynamoError::unknown_operation(format!("Unknown operation DynamoDB_20120810.{other}"))),
        }
    }

    fn create_table(&self, r: &Req, ctx: &Ctx) -> Result<Json> {
        let name = r.table_name()?;
        let defs = r.arr("AttributeDefinitions")?.ok_or_else(|| not_null("attributeDefinitions"))?;
        let mut attrs = Vec::new();
        for d in defs {
            let d = as_obj(d, "AttributeDefinitions")?;
            let n = str_field(d, "AttributeName", "attributeDefinitions")?;
            let t = str_field(d, "AttributeType", "attributeDefinitions")?;
            let ty = ScalarType::parse(t).ok_or_else(|| {
                DynamoError::validation(format!(
                    "1 validation error detected: Value '{t}' at 'attributeDefinitions.1.member.attributeType' failed to satisfy constraint: Member must satisfy enum value set: [B, N, S]"
                ))
            })?;
            if attrs.iter().any(|a: &KeyAttr| a.name == n) {
                return Err(DynamoError::validation(
                    "Cannot have two attributes with the same name in AttributeDefinitions",
                ));
            }
            attrs.push(KeyAttr { name: n.to_owned(), ty });
        }
        let schema = r.arr("KeySchema")?.ok_or_else(|| not_null("keySchema"))?;
        let (hash, range) = key_schema(schema, &attrs, "keySchema")?;
        let billing = r.str("BillingMode")?.unwrap_or("PROVISIONED").to_owned();
        let (rcu, wcu) = throughput(r.obj("ProvisionedThroughput")?, &billing, "")?;
        let mut indexes = Vec::new();
        for (key, global) in [("GlobalSecondaryIndexes", true), ("LocalSecondaryIndexes", false)] {
            for g in r.arr(key)?.into_iter().flatten() {
                let ix = index_def(as_obj(g, key)?, &attrs, &billing, global)?;
                if !global && ix.hash != hash {
                    return Err(DynamoError::validation(
                        "One or more parameter values were invalid: Table KeySchema does not have a range key, which is required when specifying a LocalSecondaryIndex",
                    ));
                }
                if indexes.iter().any(|i: &IndexMeta| i.name == ix.name) {
                    return Err(DynamoError::validation(format!(
                        "One or more parameter values were invalid: Duplicate index name: {}",
                        ix.name
                    )));
                }
                indexes.push(ix);
            }
        }
        let used = |a: &KeyAttr| {
            a.name == hash.name
                || range.as_ref().is_some_and(|r| r.name == a.name)
                || indexes.iter().any(|i| i.hash.name == a.name || i.range.as_ref().is_some_and(|r| r.name == a.name))
        };
        if !attrs.iter().all(used) {
            return Err(DynamoError::validation(
                "One or more parameter values were invalid: Number of attributes in KeySchema does not exactly match number of attributes defined in AttributeDefinitions",
            ));
        }
        let mut tags = Vec::new();
        for t in r.arr("Tags")?.into_iter().flatten() {
            let t = as_obj(t, "Tags")?;
            tags.push((str_field(t, "Key", "tags")?.to_owned(), str_field(t, "Value", "tags")?.to_owned()));
        }
        let meta = TableMeta {
            name: name.to_owned(),
            hash,
            range,
            attrs,
            indexes,
            billing,
            rcu,
            wcu,
            created_ms: ctx.now_ms,
            id: uuid::Uuid::new_v4().to_string(),
            tags,
            deletion_protection: r.bool("DeletionProtectionEnabled")?.unwrap_or(false),
        };
        let t = self.create(meta)?;
        let g = t.lock();
        Ok(json!({ "TableDescription": self.describe(&g, ctx, "ACTIVE") }))
    }

    /// The `TableDescription` of a table.
    fn describe(&self, g: &Inner, ctx: &Ctx, status: &str) -> Json {
        let m = &g.meta;
        let arn = format!("arn:aws:dynamodb:{}:{}:table/{}", ctx.region, self.config().account_id, m.name);
        let size: usize = g.items.values().map(item_size).sum();
        let created = m.created_ms as f64 / 1000.0;
        let pt = |rcu: u64, wcu: u64| json!({"NumberOfDecreasesToday": 0, "ReadCapacityUnits": rcu, "WriteCapacityUnits": wcu});
        let mut d = json!({
            "AttributeDefinitions": m.attrs.iter().map(|a| json!({"AttributeName": a.name, "AttributeType": a.ty.as_str()})).collect::<Vec<_>>(),
            "TableName": m.name,
            "KeySchema": schema_json(&m.hash, m.range.as_ref()),
            "TableStatus": status,
            "CreationDateTime": created,
            "ProvisionedThroughput": pt(m.rcu, m.wcu),
            "TableSizeBytes": size,
            "ItemCount": g.items.len(),
            "TableArn": arn,
            "TableId": m.id,
            "DeletionProtectionEnabled": m.deletion_protection,
        });
        if m.billing == "PAY_PER_REQUEST" {
            d["BillingModeSummary"] =
                json!({"BillingMode": "PAY_PER_REQUEST", "LastUpdateToPayPerRequestDateTime": created});
        }
        for (key, global) in [("GlobalSecondaryIndexes", true), ("LocalSecondaryIndexes", false)] {
            let list: Vec<Json> = m
                .indexes
                .iter()
                .filter(|i| i.global == global)
                .map(|i| {
                    let members: Vec<&Item> = g.items.values().filter(|it| index_key(i, it).is_some()).collect();
                    let mut projection = json!({"ProjectionType": i.projection});
                    if !i.non_key.is_empty() {
                        projection["NonKeyAttributes"] = json!(i.non_key);
                    }
                    let mut x = json!({
                        "IndexName": i.name,
                        "KeySchema": schema_json(&i.hash, i.range.as_ref()),
                        "Projection": projection,
                        "IndexSizeBytes": members.iter().map(|it| item_size(it)).sum::<usize>(),
                        "ItemCount": members.len(),
                        "IndexArn": format!("{arn}/index/{}", i.name),
                    });
                    if global {
                        x["IndexStatus"] = json!("ACTIVE");
                        x["ProvisionedThroughput"] = pt(i.rcu, i.wcu);
                    }
                    x
                })
                .collect();
            if !list.is_empty() {
                d[key] = Json::Array(list);
            }
        }
        d
    }

    fn describe_table(&self, r: &Req, ctx: &Ctx) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name).map_err(|_| table_not_found(name))?;
        let g = t.lock();
        g.check().map_err(|_| table_not_found(name))?;
        Ok(json!({ "Table": self.describe(&g, ctx, "ACTIVE") }))
    }

    fn delete_table(&self, r: &Req, ctx: &Ctx) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name).map_err(|_| table_not_found(name))?;
        let desc = {
            let g = t.lock();
            self.describe(&g, ctx, "DELETING")
        };
        self.drop_table(name)?;
        Ok(json!({ "TableDescription": desc }))
    }

    fn list_tables(&self, r: &Req) -> Result<Json> {
        let limit = r.int("Limit")?.unwrap_or(100);
        if !(1..=100).contains(&limit) {
            return Err(DynamoError::validation(format!(
                "1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: Member must have value {} 100",
                if limit < 1 { "greater than or equal to 1, less than or equal to" } else { "less than or equal to" }
            )));
        }
        let start = r.str("ExclusiveStartTableName")?;
        let names: Vec<String> = self.names().into_iter().filter(|n| start.is_none_or(|s| n.as_str() > s)).collect();
        let page: Vec<&String> = names.iter().take(limit as usize).collect();
        let mut out = json!({ "TableNames": page });
        if names.len() > limit as usize
            && let Some(last) = page.last()
        {
            out["LastEvaluatedTableName"] = json!(last);
        }
        Ok(out)
    }

    fn update_table(&self, r: &Req, ctx: &Ctx) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name).map_err(|_| table_not_found(name))?;
        let mut g = t.lock();
        g.check().map_err(|_| table_not_found(name))?;
        let mut meta = g.meta.clone();
        for d in r.arr("AttributeDefinitions")?.into_iter().flatten() {
            let d = as_obj(d, "AttributeDefinitions")?;
            let n = str_field(d, "AttributeName", "attributeDefinitions")?;
            let ty = ScalarType::parse(str_field(d, "AttributeType", "attributeDefinitions")?)
                .ok_or_else(|| DynamoError::validation("Invalid AttributeType"))?;
            match meta.attrs.iter_mut().find(|a| a.name == n) {
                Some(a) if a.ty != ty => {
                    return Err(DynamoError::validation(format!(
                        "One or more parameter values were invalid: Type mismatch for attribute {n}"
                    )));
                }
                Some(_) => {}
                None => meta.attrs.push(KeyAttr { name: n.to_owned(), ty }),
            }
        }
        if let Some(b) = r.str("BillingMode")? {
            if b != "PROVISIONED" && b != "PAY_PER_REQUEST" {
                return Err(DynamoError::validation(format!(
                    "1 validation error detected: Value '{b}' at 'billingMode' failed to satisfy constraint: Member must satisfy enum value set: [PROVISIONED, PAY_PER_REQUEST]"
                )));
            }
            meta.billing = b.to_owned();
        }
        if let Some(pt) = r.obj("ProvisionedThroughput")? {
            (meta.rcu, meta.wcu) = throughput(Some(pt), &meta.billing, "")?;
        } else if meta.billing == "PAY_PER_REQUEST" {
            (meta.rcu, meta.wcu) = (0, 0);
        }
        if let Some(p) = r.bool("DeletionProtectionEnabled")? {
            meta.deletion_protection = p;
        }
        for u in r.arr("GlobalSecondaryIndexUpdates")?.into_iter().flatten() {
            let u = as_obj(u, "GlobalSecondaryIndexUpdates")?;
            if let Some(c) = u.get("Create") {
                let ix = index_def(as_obj(c, "Create")?, &meta.attrs, &meta.billing, true)?;
                if meta.indexes.iter().any(|i| i.name == ix.name) {
                    return Err(DynamoError::validation(format!(
                        "One or more parameter values were invalid: Index with name: {} already exists",
                        ix.name
                    )));
                }
                meta.indexes.push(ix);
            } else if let Some(d) = u.get("Delete") {
                let n = str_field(as_obj(d, "Delete")?, "IndexName", "globalSecondaryIndexUpdates")?;
                let before = meta.indexes.len();
                meta.indexes.retain(|i| !(i.global && i.name == n));
                if meta.indexes.len() == before {
                    return Err(DynamoError::not_found(format!("Requested resource not found: Index: {n} not found")));
                }
            } else if let Some(up) = u.get("Update") {
                let up = as_obj(up, "Update")?;
                let n = str_field(up, "IndexName", "globalSecondaryIndexUpdates")?;
                let pt = up.get("ProvisionedThroughput").map(|v| as_obj(v, "ProvisionedThroughput")).transpose()?;
                let billing = meta.billing.clone();
                let ix = meta.indexes.iter_mut().find(|i| i.global && i.name == n).ok_or_else(|| {
                    DynamoError::not_found(format!("Requested resource not found: Index: {n} not found"))
                })?;
                (ix.rcu, ix.wcu) = throughput(pt, &billing, "")?;
            }
        }
        self.save_meta(&t, &mut g, meta)?;
        Ok(json!({ "TableDescription": self.describe(&g, ctx, "ACTIVE") }))
    }

    fn get_item(&self, r: &Req) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name)?;
        let key_item = r.item("Key")?.ok_or_else(|| not_null("key"))?;
        let (names, values) = substitutions(r)?;
        let mut sub = Subst::new(&names, &values);
        let projection = projection(r, &mut sub)?;
        sub.check_all_used()?;
        let (found, seen) = {
            let g = t.lock();
            g.check()?;
            let key = key_from(&g.meta, &key_item)?;
            (g.items.get(&key).map(|i| apply_projection(i, projection.as_deref())), t.written())
        };
        t.durable(seen)?;
        let mut out = json!({});
        if let Some(item) = found {
            out["Item"] = item_to_json(&item);
        }
        consumed(r, name, &mut out)?;
        Ok(out)
    }

    fn put_item(&self, r: &Req) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name)?;
        let item = r.item("Item")?.ok_or_else(|| not_null("item"))?;
        let rv = r.str("ReturnValues")?.unwrap_or("NONE");
        if rv != "NONE" && rv != "ALL_OLD" {
            return Err(DynamoError::validation("ReturnValues can only be ALL_OLD or NONE"));
        }
        let (names, values) = substitutions(r)?;
        let mut sub = Subst::new(&names, &values);
        let check = Check::parse(r, &mut sub, &[])?;
        sub.check_all_used()?;
        let (old, seq) = {
            let mut g = t.lock();
            g.check()?;
            let key = item_key(&g.meta, &item)?;
            let old = g.items.get(&key).cloned();
            check.run(r, old.as_ref())?;
            let seq = t.put(&mut g, key, item)?;
            (old, seq)
        };
        t.durable(seq)?;
        let mut out = json!({});
        if let (Some(old), "ALL_OLD") = (old, rv) {
            out["Attributes"] = item_to_json(&old);
        }
        consumed(r, name, &mut out)?;
        Ok(out)
    }

    fn delete_item(&self, r: &Req) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name)?;
        let key_item = r.item("Key")?.ok_or_else(|| not_null("key"))?;
        let rv = r.str("ReturnValues")?.unwrap_or("NONE");
        if rv != "NONE" && rv != "ALL_OLD" {
            return Err(DynamoError::validation("ReturnValues can only be ALL_OLD or NONE"));
        }
        let (names, values) = substitutions(r)?;
        let mut sub = Subst::new(&names, &values);
        let check = Check::parse(r, &mut sub, &[])?;
        sub.check_all_used()?;
        let (old, seq) = {
            let mut g = t.lock();
            g.check()?;
            let key = key_from(&g.meta, &key_item)?;
            let old = g.items.get(&key).cloned();
            check.run(r, old.as_ref())?;
            let seq = if old.is_some() { t.delete(&mut g, &key)? } else { t.written() };
            (old, seq)
        };
        t.durable(seq)?;
        let mut out = json!({});
        if let (Some(old), "ALL_OLD") = (old, rv) {
            out["Attributes"] = item_to_json(&old);
        }
        consumed(r, name, &mut out)?;
        Ok(out)
    }

    /// Up to 25 puts and deletes over any tables. Everything is checked before anything is
    /// written, as DynamoDB refuses a bad call whole; nothing is ever left unprocessed here.
    fn batch_write_item(&self, r: &Req) -> Result<Json> {
        let requests = r.obj("RequestItems")?.ok_or_else(|| not_null("requestItems"))?;
        if requests.is_empty() {
            return Err(DynamoError::validation(
                "1 validation error detected: Value '{}' at 'requestItems' failed to satisfy constraint: \
                 Member must have length greater than or equal to 1",
            ));
        }
        let mut total = 0;
        let mut plan = Vec::new();
        for (name, list) in requests {
            check_name(name, "requestItems.key", 3)?;
            let Json::Array(list) = list else { return Err(wrong_type("RequestItems", "a list")) };
            total += list.len();
            if total > 25 {
                return Err(DynamoError::validation("Too many items requested for the BatchWriteItem call"));
            }
            let t = self.table(name)?;
            let meta = t.lock().meta.clone();
            let mut writes = Vec::with_capacity(list.len());
            let mut keys = std::collections::BTreeSet::new();
            for w in list {
                let Json::Object(w) = w else { return Err(wrong_type("WriteRequest", "a structure")) };
                let w = Req(w);
                let write = match (w.obj("PutRequest")?, w.obj("DeleteRequest")?) {
                    (Some(put), None) => {
                        let item = Req(put).item("Item")?.ok_or_else(|| not_null("item"))?;
                        (item_key(&meta, &item)?, Some(item))
                    }
                    (None, Some(delete)) => {
                        let key = Req(delete).item("Key")?.ok_or_else(|| not_null("key"))?;
                        (key_from(&meta, &key)?, None)
                    }
                    _ => {
                        return Err(DynamoError::validation(
                            "Supplied AttributeValue has more than one datatypes set, must contain exactly one of the supported datatypes",
                        ));
                    }
                };
                if !keys.insert(write.0.clone()) {
                    return Err(DynamoError::validation("Provided list of item keys contains duplicates"));
                }
                writes.push(write);
            }
            plan.push((t, writes));
        }
        for (t, writes) in plan {
            let seq = {
                let mut g = t.lock();
                g.check()?;
                let mut seq = t.written();
                for (key, item) in writes {
                    seq = match item {
                        Some(item) => t.put(&mut g, key, item)?,
                        None if g.items.contains_key(&key) => t.delete(&mut g, &key)?,
                        None => seq,
                    };
                }
                seq
            };
            t.durable(seq)?;
        }
        Ok(json!({"UnprocessedItems": {}}))
    }

    fn update_item(&self, r: &Req) -> Result<Json> {
        let name = r.table_name()?;
        let t = self.table(name)?;
        let key_item = r.item("Key")?.ok_or_else(|| not_null("key"))?;
        let rv = r.str("ReturnValues")?.unwrap_or("NONE");
        if !["NONE", "ALL_OLD", "UPDATED_OLD", "ALL_NEW", "UPDATED_NEW"].contains(&rv) {
            return Err(DynamoError::validation(format!(
                "1 validation error detected: Value '{rv}' at 'returnValues' failed to satisfy constraint: Member must satisfy enum value set: [ALL_NEW, UPDATED_OLD, ALL_OLD, NONE, UPDATED_NEW]"
            )));
        }
        let (names, values) = substitutions(r)?;
        let mut sub = Subst::new(&names, &values);
        let update_expr = r.str("UpdateExpression")?;
        let legacy = r.obj("AttributeUpdates")?;
        let check = Check::parse(r, &mut sub, if legacy.is_some() { &["AttributeUpdates"] } else { &[] })?;
        if let (Some(_), Some(_)) = (update_expr, legacy) {
            return Err(mixed(&["AttributeUpdates"], &["UpdateExpression"]));
        }
        if legacy.is_some() && check.is_expression() {
            return Err(mixed(&["AttributeUpdates"], &["ConditionExpression"]));
        }
        if update_expr.is_some() && check.is_legacy() {
            return Err(mixed(&["Expected"], &["UpdateExpression"]));
        }
        let update = update_expr.map(|u| expr::parse_update(u, &mut sub)).transpose()?;
        sub.check_all_used()?;
        let legacy = legacy.map(parse_attribute_updates).transpose()?;
        let touched: Vec<String> = match (&update, &legacy) {
            (Some(u), _) => u
                .paths()
                .iter()
                .filter_map(|p| match p.first() {
                    Some(Elem::Name(n)) => Some(n.clone()),
                    _ => None,
                })
                .collect(),
            (None, Some(l)) => l.iter().map(|(n, _, _)| n.clone()).collect(),
            _ => Vec::new(),
        };
        let (old, new, seq) = {
            let mut g = t.lock();
            g.check()?;
            let meta = &g.meta;
            let key = key_from(meta, &key_item)?;
            for n in &touched {
                if *n == meta.hash.name || meta.range.as_ref().is_some_and(|r| r.name == *n) {
                    return Err(DynamoError::validation(format!(
                        "One or more parameter values were invalid: Cannot update attribute {n}. This attribute is part of the key"
                    )));
                }
            }
            let old = g.items.get(&key).cloned();
            check.run(r, old.as_ref())?;
            let mut new = old.clone().unwrap_or_else(|| key_item.clone());
            if let Some(u) = &update {
                expr::apply_update(u, &mut new)?;
            }
            if let Some(l) = &legacy {
                apply_attribute_updates(l, &mut new)?;
            }
            check_item(meta, &new)?;
            let seq = if old.as_ref() != Some(&new) { t.put(&mut g, key, new.clone())? } else { t.written() };
            (old, new, seq)
        };
        t.durable(seq)?;
        let pick = |item: &Item| -> Item {
            touched.iter().filter_map(|n| item.get(n).map(|v| (n.clone(), v.clone()))).collect()
        };
        let attrs = match rv {
            "ALL_OLD" => old,
            "ALL_NEW" => Some(new),
            "UPDATED_OLD" => old.as_ref().map(pick),
            "UPDATED_NEW" => Some(pick(&new)),
            _ => None,
        };
        let mut out = json!({});
        if let Some(a) = attrs.filter(|a| !a.is_empty()) {
            out["Attributes"] = item_to_json(&a);
        }
        consumed(r, name, &mut out)?;
        Ok(out)
    }

    fn scan(&self, r: &Req) -> Result<Json> {
        self.read_many(r, false)
    }

    fn query(&self, r: &Req) -> Result<Json> {
        self.read_many(r, true)
    }

    /// Scan and Query: pick the candidates in key order (of the table or the index), page them
    /// with `ExclusiveStartKey` / `Limit`, filter, project.
    fn read_many(&self, r: &Req, is_query: bool) -> Result<Json> {
        let name = r.table_name()?;
        let t: Arc<Table> = self.table(name)?;
        let limit = r.int("Limit")?;
        if let Some(l) = limit
            && l < 1
        {
            return Err(DynamoError::validation(format!(
                "1 validation error detected: Value '{l}' at 'limit' failed to satisfy constraint: Member must have value greater than or equal to 1"
            )));
        }
        let limit = limit.map_or(usize::MAX, |l| l as usize);
        let index_name = r.index_name()?;
        let (names, values) = substitutions(r)?;
        let mut sub = Subst::new(&names, &values);
        let key_cond = if is_query {
            match (r.str("KeyConditionExpression")?, r.obj("KeyConditions")?) {
                (Some(_), Some(_)) => return Err(mixed(&["KeyConditions"], &["KeyConditionExpression"])),
                (Some(k), None) => Some(KeyCond::Expr(expr::parse_condition(k, "KeyConditionExpression", &mut sub)?)),
                (None, Some(k)) => Some(KeyCond::Legacy(parse_expected(k, true)?)),
                (None, None) => {
                    return Err(DynamoError::validation(
                        "Either the KeyConditions or KeyConditionExpression parameter must be specified in the request.",
                    ));
                }
            }
        } else {
            None
        };
        let filter_key = if is_query { "QueryFilter" } else { "ScanFilter" };
        let filter = match (r.str("FilterExpression")?, r.obj(filter_key)?) {
            (Some(_), Some(_)) => return Err(mixed(&[filter_key], &["FilterExpression"])),
            (Some(f), None) => Some(KeyCond::Expr(expr::parse_condition(f, "FilterExpression", &mut sub)?)),
            (None, Some(f)) => {
                let legacy_or = r.str("ConditionalOperator")? == Some("OR");
                Some(KeyCond::LegacyOp(parse_expected(f, true)?, legacy_or))
            }
            (None, None) => None,
        };
        let projection = projection(r, &mut sub)?;
        sub.check_all_used()?;
        let select = r.str("Select")?;
        let forward = r.bool("ScanIndexForward")?.unwrap_or(true);
        let segment = match (r.int("Segment")?, r.int("TotalSegments")?) {
            (Some(s), Some(n)) if (1..=1_000_000).contains(&n) && (0..n).contains(&s) => Some((s as u32, n as u32)),
            (None, None) => None,
            _ => {
                return Err(DynamoError::validation(
                    "The TotalSegments parameter is required but was not present in the request when Segment parameter is present",
                ));
            }
        };
        let start = r.item("ExclusiveStartKey")?;
        let (page, last, scanned, seen) = {
            let g = t.lock();
            g.check()?;
            let meta = &g.meta;
            let index = match index_name {
                Some(n) => Some(meta.indexes.iter().find(|i| i.name == n).ok_or_else(|| {
                    DynamoError::validation(format!("The table does not have the specified index: {n}"))
                })?),
                None => None,
            };
            if index.is_some_and(|i| i.global) && r.bool("ConsistentRead")? == Some(true) {
                return Err(DynamoError::validation("Consistent reads are not supported on global secondary indexes"));
            }
            let (hname, rname) = match index {
                Some(i) => (&i.hash, i.range.as_ref()),
                None => (&meta.hash, meta.range.as_ref()),
            };
            let hash_value = match &key_cond {
                Some(kc) => Some(kc.hash_value(hname, rname)?),
                None => None,
            };
            // Candidates: (position, item) in the order of the table or the index.
            type Pos = (Option<KeyPart>, Option<KeyPart>, Key);
            let mut cands: Vec<(Pos, &Item)> = match (index, &hash_value) {
                (None, Some(h)) => g
                    .items
                    .range((Bound::Included((h.clone(), None)), Bound::Unbounded))
                    .take_while(|(k, _)| k.0 == *h)
                    .map(|(k, i)| ((None, None, k.clone()), i))
                    .collect(),
                (None, None) => {
                    // A plain forward Scan of the table reads only what this page needs.
                    let after = match (&start, forward, segment) {
                        (Some(s), true, None) => meta.key_of(s),
                        _ => None,
                    };
                    let take = if segment.is_none() && forward { limit.saturating_add(1) } else { usize::MAX };
                    let lower = match after {
                        Some(k) => Bound::Excluded(k),
                        None => Bound::Unbounded,
                    };
                    g.items
                        .range((lower, Bound::Unbounded))
                        .take(take)
                        .map(|(k, i)| ((None, None, k.clone()), i))
                        .collect()
                }
                (Some(ix), h) => {
                    let mut v: Vec<(Pos, &Item)> = g
                        .items
                        .iter()
                        .filter_map(|(k, i)| {
                            let (ih, ir) = index_key(ix, i)?;
                            if h.as_ref().is_some_and(|h| *h != ih) {
                                return None;
                            }
                            Some(((Some(ih), ir, k.clone()), i))
                        })
                        .collect();
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v
                }
            };
            if let Some(kc) = &key_cond {
                cands.retain(|(_, i)| kc.eval(i));
            }
            if let Some((s, n)) = segment {
                cands.retain(|(p, _)| segment_of(&p.2, n) == s);
            }
            if !forward {
                cands.reverse();
            }
            if let Some(start) = &start {
                let bad = || {
                    DynamoError::validation(
                        "The provided starting key is invalid: The provided key element does not match the schema",
                    )
                };
                let tk = meta.key_of(start).ok_or_else(bad)?;
                let pos: Pos = match index {
                    Some(ix) => {
                        let (ih, ir) = index_key(ix, start).ok_or_else(bad)?;
                        (Some(ih), ir, tk)
                    }
                    None => (None, None, tk),
                };
                cands.retain(|(p, _)| if forward { *p > pos } else { *p < pos });
            }
            let mut page = Vec::new();
            let mut bytes = 0;
            let mut last = None;
            let mut scanned = 0;
            let total = cands.len();
            for (i, (pos, item)) in cands.into_iter().enumerate() {
                if scanned >= limit || bytes >= MAX_PAGE_BYTES {
                    break;
                }
                scanned += 1;
                bytes += item_size(item);
                // Where the next page starts, if this one stops here with items left.
                last = (i + 1 < total).then(|| pos.2.clone());
                if filter.as_ref().is_none_or(|f| f.eval(item)) {
                    let projected = match index {
                        Some(ix) if ix.projection != "ALL" => {
                            let mut keep: Item = item
                                .iter()
                                .filter(|(k, _)| {
                                    **k == meta.hash.name
                                        || meta.range.as_ref().is_some_and(|r| r.name == **k)
                                        || **k == ix.hash.name
                                        || ix.range.as_ref().is_some_and(|r| r.name == **k)
                                        || ix.non_key.contains(k)
                                })
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect();
                            if let Some(p) = projection.as_deref() {
                                keep = expr::project(&keep, p);
                            }
                            keep
                        }
                        _ => apply_projection(item, projection.as_deref()),
                    };
                    page.push(projected);
                }
            }
            let last = last.map(|k| {
                let mut key = meta.key_item(&k);
                if let (Some(ix), Some(item)) = (index, g.items.get(&k)) {
                    for a in std::iter::once(&ix.hash).chain(ix.range.as_ref()) {
                        if let Some(v) = item.get(&a.name) {
                            key.insert(a.name.clone(), v.clone());
                        }
                    }
                }
                key
            });
            (page, last, scanned, t.written())
        };
        t.durable(seen)?;
        let mut out = json!({ "Count": page.len(), "ScannedCount": scanned });
        if select != Some("COUNT") {
            out["Items"] = Json::Array(page.iter().map(item_to_json).collect());
        }
        if let Some(k) = last {
            out["LastEvaluatedKey"] = item_to_json(&k);
        }
        consumed(r, name, &mut out)?;
        Ok(out)
    }
}

fn segment_of(k: &Key, n: u32) -> u32 {
    let bytes = serde_json::to_vec(&item_to_json(&[("k".to_owned(), k.0.to_value())].into_iter().collect()))
        .unwrap_or_default();
    crc32fast::hash(&bytes) % n
}

fn table_not_found(name: &str) -> DynamoError {
    DynamoError::not_found(format!("Requested resource not found: Table: {name} not found"))
}

fn mixed(non_expr: &[&str], expr: &[&str]) -> DynamoError {
    DynamoError::validation(format!(
        "Can not use both expression and non-expression parameters in the same request: Non-expression parameters: {{{}}} Expression parameters: {{{}}}",
        non_expr.join(", "),
        expr.join(", ")
    ))
}

fn consumed(r: &Req, table: &str, out: &mut Json) -> Result<()> {
    match r.str("ReturnConsumedCapacity")? {
        Some("TOTAL") | Some("INDEXES") => {
            out["ConsumedCapacity"] = json!({"TableName": table, "CapacityUnits": 1.0});
        }
        _ => {}
    }
    Ok(())
}

fn schema_json(hash: &KeyAttr, range: Option<&KeyAttr>) -> Json {
    let mut v = vec![json!({"AttributeName": hash.name, "KeyType": "HASH"})];
    if let Some(r) = range {
        v.push(json!({"AttributeName": r.name, "KeyType": "RANGE"}));
    }
    Json::Array(v)
}

fn key_schema(schema: &[Json], attrs: &[KeyAttr], field: &str) -> Result<(KeyAttr, Option<KeyAttr>)> {
    let mut hash = None;
    let mut range = None;
    if schema.is_empty() || schema.len() > 2 {
        return Err(DynamoError::validation(format!(
            "1 validation error detected: Value '[]' at '{field}' failed to satisfy constraint: Member must have length {}",
            if schema.is_empty() { "greater than or equal to 1" } else { "less than or equal to 2" }
        )));
    }
    for (i, k) in schema.iter().enumerate() {
        let k = as_obj(k, "KeySchema")?;
        let n = str_field(k, "AttributeName", field)?;
        let kt = str_field(k, "KeyType", field)?;
        let Some(a) = attrs.iter().find(|a| a.name == n) else {
            let defined: Vec<&str> = attrs.iter().map(|a| a.name.as_str()).collect();
            return Err(DynamoError::validation(format!(
                "One or more parameter values were invalid: Some index key attributes are not defined in AttributeDefinitions. Keys: [{n}], AttributeDefinitions: [{}]",
                defined.join(", ")
            )));
        };
        match (kt, i) {
            ("HASH", 0) => hash = Some(a.clone()),
            ("RANGE", 1) => range = Some(a.clone()),
            ("HASH" | "RANGE", _) => {
                return Err(DynamoError::validation(
                    "Invalid KeySchema: The first KeySchemaElement is not a HASH key type",
                ));
            }
            _ => {
                return Err(DynamoError::validation(format!(
                    "1 validation error detected: Value '{kt}' at '{field}.{}.member.keyType' failed to satisfy constraint: Member must satisfy enum value set: [HASH, RANGE]",
                    i + 1
                )));
            }
        }
    }
    let hash = hash.ok_or_else(|| {
        DynamoError::validation("Invalid KeySchema: The first KeySchemaElement is not a HASH key type")
    })?;
    if range.as_ref().is_some_and(|r| r.name == hash.name) {
        return Err(DynamoError::validation("Invalid KeySchema: Some index key attribute have no definition"));
    }
    Ok((hash, range))
}

fn throughput(pt: Option<&Map<String, Json>>, billing: &str, _ctx: &str) -> Result<(u64, u64)> {
    match (billing, pt) {
        ("PAY_PER_REQUEST", None) => Ok((0, 0)),
        ("PAY_PER_REQUEST", Some(_)) => Err(DynamoError::validation(
            "One or more parameter values were invalid: Neither ReadCapacityUnits nor WriteCapacityUnits can be specified when BillingMode is PAY_PER_REQUEST",
        )),
        ("PROVISIONED", None) => Err(DynamoError::validation("No provisioned throughput specified for the table")),
        ("PROVISIONED", Some(p)) => {
            let get = |k: &str| -> Result<u64> {
                let v = p
                    .get(k)
                    .and_then(Json::as_i64)
                    .ok_or_else(|| not_null(&format!("provisionedThroughput.{}", lower_first(k))))?;
                if v < 1 {
                    return Err(DynamoError::validation(format!(
                        "1 validation error detected: Value '{v}' at 'provisionedThroughput.{}' failed to satisfy constraint: Member must have value greater than or equal to 1",
                        lower_first(k)
                    )));
                }
                Ok(v as u64)
            };
            Ok((get("ReadCapacityUnits")?, get("WriteCapacityUnits")?))
        }
        (other, _) => Err(DynamoError::validation(format!(
            "1 validation error detected: Value '{other}' at 'billingMode' failed to satisfy constraint: Member must satisfy enum value set: [PROVISIONED, PAY_PER_REQUEST]"
        ))),
    }
}

fn index_def(g: &Map<String, Json>, attrs: &[KeyAttr], billing: &str, global: bool) -> Result<IndexMeta> {
    let name = str_field(g, "IndexName", "globalSecondaryIndexes")?;
    check_name(name, "indexName", 3)?;
    let schema = g.get("KeySchema").and_then(Json::as_array).ok_or_else(|| not_null("keySchema"))?;
    let (hash, range) = key_schema(schema, attrs, "keySchema")?;
    let p = g.get("Projection").and_then(Json::as_object).ok_or_else(|| not_null("projection"))?;
    let projection = p.get("ProjectionType").and_then(Json::as_str).unwrap_or("ALL").to_owned();
    if !["ALL", "KEYS_ONLY", "INCLUDE"].contains(&projection.as_str()) {
        return Err(DynamoError::validation(format!(
            "1 validation error detected: Value '{projection}' at 'projection.projectionType' failed to satisfy constraint: Member must satisfy enum value set: [INCLUDE, ALL, KEYS_ONLY]"
        )));
    }
    let non_key: Vec<String> = p
        .get("NonKeyAttributes")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let pt = g.get("ProvisionedThroughput").map(|v| as_obj(v, "ProvisionedThroughput")).transpose()?;
    let (rcu, wcu) = if global { throughput(pt, billing, "")? } else { (0, 0) };
    Ok(IndexMeta { name: name.to_owned(), hash, range, projection, non_key, rcu, wcu, global })
}

/// The index key of an item, when it has (well-typed) index key attributes.
fn index_key(ix: &IndexMeta, item: &Item) -> Option<(KeyPart, Option<KeyPart>)> {
    let h = item.get(&ix.hash.name).filter(|v| has_type(v, ix.hash.ty)).and_then(KeyPart::of)?;
    let r = match &ix.range {
        Some(r) => Some(item.get(&r.name).filter(|v| has_type(v, r.ty)).and_then(KeyPart::of)?),
        None => None,
    };
    Some((h, r))
}

fn empty_key(name: &str, v: &Value) -> Option<DynamoError> {
    match v {
        Value::S(s) if s.is_empty() => Some(DynamoError::validation(format!(
            "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty string value. Key: {name}"
        ))),
        Value::B(b) if b.is_empty() => Some(DynamoError::validation(format!(
            "One or more parameter values are not valid. The AttributeValue for a key attribute cannot contain an empty binary value. Key: {name}"
        ))),
        _ => None,
    }
}

/// The primary key given as a `Key` parameter: exactly the key attributes, well typed.
fn key_from(meta: &TableMeta, key: &Item) -> Result<Key> {
    let bad = || DynamoError::validation("The provided key element does not match the schema");
    let want = 1 + usize::from(meta.range.is_some());
    for a in std::iter::once(&meta.hash).chain(meta.range.as_ref()) {
        let v = key.get(&a.name).ok_or_else(bad)?;
        if !has_type(v, a.ty) {
            return Err(bad());
        }
        if let Some(e) = empty_key(&a.name, v) {
            return Err(e);
        }
    }
    if key.len() != want {
        return Err(bad());
    }
    meta.key_of(key).ok_or_else(bad)
}

/// Checks the key attributes (and secondary index keys) and the size of an item to be stored.
fn check_item(meta: &TableMeta, item: &Item) -> Result<()> {
    for a in std::iter::once(&meta.hash).chain(meta.range.as_ref()) {
        let Some(v) = item.get(&a.name) else {
            return Err(DynamoError::validation(format!(
                "One or more parameter values were invalid: Missing the key {} in the item",
                a.name
            )));
        };
        if !has_type(v, a.ty) {
            return Err(DynamoError::validation(format!(
                "One or more parameter values were invalid: Type mismatch for key {} expected: {} actual: {}",
                a.name,
                a.ty.as_str(),
                v.type_name()
            )));
        }
        if let Some(e) = empty_key(&a.name, v) {
            return Err(e);
        }
    }
    for ix in &meta.indexes {
        for a in std::iter::once(&ix.hash).chain(ix.range.as_ref()) {
            let Some(v) = item.get(&a.name) else { continue };
            if !has_type(v, a.ty) {
                return Err(DynamoError::validation(format!(
                    "One or more parameter values were invalid: Type mismatch for Index Key {} Expected: {} Actual: {} IndexName: {}",
                    a.name,
                    a.ty.as_str(),
                    v.type_name(),
                    ix.name
                )));
            }
            if empty_key(&a.name, v).is_some() {
                return Err(DynamoError::validation(format!(
                    "One or more parameter values are not valid. A value specified for a secondary index key is not supported. The AttributeValue for a key attribute cannot contain an empty string value. IndexName: {}, IndexKey: {}",
                    ix.name, a.name
                )));
            }
        }
    }
    if item_size(item) > MAX_ITEM {
        return Err(DynamoError::validation("Item size has exceeded the maximum allowed size"));
    }
    Ok(())
}

fn item_key(meta: &TableMeta, item: &Item) -> Result<Key> {
    check_item(meta, item)?;
    meta.key_of(item).ok_or_else(|| DynamoError::validation("The provided key element does not match the schema"))
}

type Substitutions = (HashMap<String, String>, HashMap<String, Value>);

fn substitutions(r: &Req) -> Result<Substitutions> {
    let mut names = HashMap::new();
    for (k, v) in r.obj("ExpressionAttributeNames")?.into_iter().flatten() {
        let v = v.as_str().ok_or_else(|| wrong_type("ExpressionAttributeNames", "a map of strings"))?;
        names.insert(k.clone(), v.to_owned());
    }
    let mut values = HashMap::new();
    for (k, v) in r.obj("ExpressionAttributeValues")?.into_iter().flatten() {
        values.insert(k.clone(), Value::from_json(v)?);
    }
    let any_expr = [
        "ConditionExpression",
        "UpdateExpression",
        "KeyConditionExpression",
        "FilterExpression",
        "ProjectionExpression",
    ]
    .iter()
    .any(|k| r.get(k).is_some());
    if !any_expr {
        if !names.is_empty() {
            return Err(DynamoError::validation(
                "ExpressionAttributeNames can only be specified when using expressions",
            ));
        }
        if !values.is_empty() {
            return Err(DynamoError::validation(
                "ExpressionAttributeValues can only be specified when using expressions",
            ));
        }
    }
    for k in values.keys() {
        if !k.starts_with(':') || k.len() < 2 {
            return Err(DynamoError::validation(format!(
                "ExpressionAttributeValues contains invalid key: Syntax error; key: \"{k}\""
            )));
        }
    }
    for k in names.keys() {
        if !k.starts_with('#') || k.len() < 2 {
            return Err(DynamoError::validation(format!(
                "ExpressionAttributeNames contains invalid key: Syntax error; key: \"{k}\""
            )));
        }
    }
    Ok((names, values))
}

fn projection(r: &Req, sub: &mut Subst<'_>) -> Result<Option<Vec<Path>>> {
    match (r.str("ProjectionExpression")?, r.arr("AttributesToGet")?) {
        (Some(_), Some(_)) => Err(mixed(&["AttributesToGet"], &["ProjectionExpression"])),
        (Some(p), None) => Ok(Some(expr::parse_projection(p, sub)?)),
        (None, Some(a)) => Ok(Some(
            a.iter()
                .map(|v| {
                    v.as_str()
                        .map(|s| vec![Elem::Name(s.to_owned())])
                        .ok_or_else(|| wrong_type("AttributesToGet", "a list of strings"))
                })
                .collect::<Result<_>>()?,
        )),
        (None, None) => Ok(None),
    }
}

fn apply_projection(item: &Item, p: Option<&[Path]>) -> Item {
    match p {
        Some(p) => expr::project(item, p),
        None => item.clone(),
    }
}

/// A legacy `Expected` / `KeyConditions` / filter entry.
#[derive(Debug, Clone)]
struct Expected {
    name: String,
    op: String,
    args: Vec<Value>,
}

fn parse_expected(m: &Map<String, Json>, require_op: bool) -> Result<Vec<Expected>> {
    let mut out = Vec::new();
    for (name, e) in m {
        let e = as_obj(e, "Expected")?;
        let value = e.get("Value").filter(|v| !v.is_null()).map(Value::from_json).transpose()?;
        let exists = match e.get("Exists") {
            None | Some(Json::Null) => None,
            Some(Json::Bool(b)) => Some(*b),
            Some(_) => return Err(wrong_type("Exists", "a boolean")),
        };
        let list = match e.get("AttributeValueList") {
            None | Some(Json::Null) => None,
            Some(Json::Array(a)) => Some(a.iter().map(Value::from_json).collect::<Result<Vec<_>>>()?),
            Some(_) => return Err(wrong_type("AttributeValueList", "a list")),
        };
        let op = match e.get("ComparisonOperator") {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(_) => return Err(wrong_type("ComparisonOperator", "a string")),
        };
        let invalid = |m: String| DynamoError::validation(format!("One or more parameter values were invalid: {m}"));
        let entry = match op {
            Some(op) => {
                if value.is_some() && list.is_some() {
                    return Err(invalid(format!(
                        "Value and AttributeValueList cannot be used together for Attribute: {name}"
                    )));
                }
                if exists.is_some() {
                    return Err(invalid(format!(
                        "Exists and ComparisonOperator cannot be used together for Attribute: {name}"
                    )));
                }
                let args = list.or_else(|| value.map(|v| vec![v])).unwrap_or_default();
                let arity_ok = match op.as_str() {
                    "NULL" | "NOT_NULL" => args.is_empty(),
                    "BETWEEN" => args.len() == 2,
                    "IN" => !args.is_empty(),
                    "EQ" | "NE" | "LE" | "LT" | "GE" | "GT" | "CONTAINS" | "NOT_CONTAINS" | "BEGINS_WITH" => {
                        args.len() == 1
                    }
                    other => {
                        return Err(DynamoError::validation(format!(
                            "1 validation error detected: Value '{other}' at 'expected.{name}.member.comparisonOperator' failed to satisfy constraint: Member must satisfy enum value set: [IN, NULL, BETWEEN, LT, NOT_CONTAINS, EQ, GT, NOT_NULL, NE, LE, BEGINS_WITH, GE, CONTAINS]"
                        )));
                    }
                };
                if !arity_ok {
                    return Err(invalid(format!("Invalid number of argument(s) for the {op} ComparisonOperator")));
                }
                Expected { name: name.clone(), op, args }
            }
            None if require_op => {
                return Err(invalid(format!("ComparisonOperator must be specified for Attribute: {name}")));
            }
            None => match (exists, value) {
                (Some(false), Some(_)) => {
                    return Err(invalid(format!("Value cannot be used when Exists is false for Attribute: {name}")));
                }
                (Some(false), None) => Expected { name: name.clone(), op: "NULL".into(), args: vec![] },
                (_, Some(v)) => Expected { name: name.clone(), op: "EQ".into(), args: vec![v] },
                (e, None) => {
                    return Err(invalid(format!(
                        "Value must be provided when Exists is {} for Attribute: {name}",
                        if e == Some(true) { "true" } else { "null" }
                    )));
                }
            },
        };
        out.push(entry);
    }
    Ok(out)
}

fn eval_expected(e: &Expected, item: &Item) -> bool {
    use std::cmp::Ordering::*;
    let a = item.get(&e.name);
    let first = e.args.first();
    let cmp = |want: &[std::cmp::Ordering]| match (a, first) {
        (Some(a), Some(b)) => a.compare(b).is_some_and(|o| want.contains(&o)),
        _ => false,
    };
    let contains = || match (a, first) {
        (Some(Value::S(a)), Some(Value::S(b))) => a.contains(b.as_str()),
        (Some(Value::Ss(a)), Some(Value::S(b))) => a.contains(b),
        (Some(Value::Ns(a)), Some(Value::N(b))) => a.contains(b),
        (Some(Value::Bs(a)), Some(Value::B(b))) => a.contains(b),
        (Some(Value::B(a)), Some(Value::B(b))) => b.is_empty() || a.windows(b.len()).any(|w| w == b.as_slice()),
        (Some(Value::L(a)), Some(b)) => a.contains(b),
        _ => false,
    };
    match e.op.as_str() {
        "EQ" => a.is_some() && a == first,
        "NE" => a.is_none() || a != first,
        "LT" => cmp(&[Less]),
        "LE" => cmp(&[Less, Equal]),
        "GT" => cmp(&[Greater]),
        "GE" => cmp(&[Greater, Equal]),
        "NULL" => a.is_none(),
        "NOT_NULL" => a.is_some(),
        "CONTAINS" => contains(),
        "NOT_CONTAINS" => a.is_some() && !contains(),
        "BEGINS_WITH" => match (a, first) {
            (Some(Value::S(a)), Some(Value::S(b))) => a.starts_with(b.as_str()),
            (Some(Value::B(a)), Some(Value::B(b))) => a.starts_with(b),
            _ => false,
        },
        "IN" => a.is_some_and(|a| e.args.contains(a)),
        "BETWEEN" => match (a, e.args.first(), e.args.get(1)) {
            (Some(a), Some(lo), Some(hi)) => {
                matches!(a.compare(lo), Some(Greater | Equal)) && matches!(a.compare(hi), Some(Less | Equal))
            }
            _ => false,
        },
        _ => false,
    }
}

/// The condition of a write: an expression, legacy `Expected` entries, or none.
enum Check {
    None,
    Expr(Cond),
    Legacy(Vec<Expected>, bool),
}

impl Check {
    fn parse(r: &Req, sub: &mut Subst<'_>, other_legacy: &[&str]) -> Result<Check> {
        let cond = r.str("ConditionExpression")?;
        let expected = r.obj("Expected")?;
        match (cond, expected) {
            (Some(_), Some(_)) => Err(mixed(&["Expected"], &["ConditionExpression"])),
            (Some(c), None) => {
                if !other_legacy.is_empty() {
                    return Err(mixed(other_legacy, &["ConditionExpression"]));
                }
                Ok(Check::Expr(expr::parse_condition(c, "ConditionExpression", sub)?))
            }
            (None, Some(e)) => {
                let or = match r.str("ConditionalOperator")? {
                    None | Some("AND") => false,
                    Some("OR") => true,
                    Some(other) => {
                        return Err(DynamoError::validation(format!(
                            "1 validation error detected: Value '{other}' at 'conditionalOperator' failed to satisfy constraint: Member must satisfy enum value set: [OR, AND]"
                        )));
                    }
                };
                Ok(Check::Legacy(parse_expected(e, false)?, or))
            }
            (None, None) => Ok(Check::None),
        }
    }

    fn is_expression(&self) -> bool {
        matches!(self, Check::Expr(_))
    }

    fn is_legacy(&self) -> bool {
        matches!(self, Check::Legacy(..))
    }

    /// Passes, or fails with `ConditionalCheckFailedException` (carrying the item when
    /// `ReturnValuesOnConditionCheckFailure` is `ALL_OLD`).
    fn run(&self, r: &Req, old: Option<&Item>) -> Result<()> {
        let empty = Item::new();
        let item = old.unwrap_or(&empty);
        let ok = match self {
            Check::None => true,
            Check::Expr(c) => expr::eval(c, item),
            Check::Legacy(list, or) => {
                if *or {
                    list.iter().any(|e| eval_expected(e, item))
                } else {
                    list.iter().all(|e| eval_expected(e, item))
                }
            }
        };
        if ok {
            return Ok(());
        }
        let mut e = DynamoError::condition_failed();
        if r.str("ReturnValuesOnConditionCheckFailure")? == Some("ALL_OLD") {
            e.item = old.map(item_to_json);
        }
        Err(e)
    }
}

/// A key condition or filter: an expression, or legacy entries (AND, or OR when asked).
enum KeyCond {
    Expr(Cond),
    Legacy(Vec<Expected>),
    LegacyOp(Vec<Expected>, bool),
}

impl KeyCond {
    fn eval(&self, item: &Item) -> bool {
        match self {
            KeyCond::Expr(c) => expr::eval(c, item),
            KeyCond::Legacy(l) => l.iter().all(|e| eval_expected(e, item)),
            KeyCond::LegacyOp(l, or) => {
                if *or {
                    l.iter().any(|e| eval_expected(e, item))
                } else {
                    l.iter().all(|e| eval_expected(e, item))
                }
            }
        }
    }

    /// The partition key value a key condition fixes with `=`; checks it names key
    /// attributes only.
    fn hash_value(&self, hash: &KeyAttr, range: Option<&KeyAttr>) -> Result<KeyPart> {
        let is_key = |n: &str| n == hash.name || range.is_some_and(|r| r.name == n);
        let missed = || DynamoError::validation(format!("Query condition missed key schema element: {}", hash.name));
        let typed = |v: &Value| -> Result<KeyPart> {
            if !has_type(v, hash.ty) {
                return Err(DynamoError::validation(
                    "One or more parameter values were invalid: Condition parameter type does not match schema type",
                ));
            }
            KeyPart::of(v).ok_or_else(missed)
        };
        match self {
            KeyCond::Expr(c) => {
                let mut conj = Vec::new();
                flatten_and(c, &mut conj);
                let mut found = None;
                for c in conj {
                    let mut names = Vec::new();
                    cond_names(c, &mut names);
                    if let Some(n) = names.iter().find(|n| !is_key(n)) {
                        return Err(DynamoError::validation(format!(
                            "Query condition missed key schema element: {} (not a key attribute: {n})",
                            hash.name
                        )));
                    }
                    if let Cond::Cmp(a, expr::CmpOp::Eq, b) = c {
                        let hit = match (a, b) {
                            (expr::Operand::Path(p), expr::Operand::Value(v))
                            | (expr::Operand::Value(v), expr::Operand::Path(p)) => {
                                (p.len() == 1 && p[0] == Elem::Name(hash.name.clone())).then_some(v)
                            }
                            _ => None,
                        };
                        if let Some(v) = hit {
                            found = Some(typed(v)?);
                        }
                    }
                }
                found.ok_or_else(missed)
            }
            KeyCond::Legacy(l) | KeyCond::LegacyOp(l, _) => {
                if let Some(e) = l.iter().find(|e| !is_key(&e.name)) {
                    return Err(DynamoError::validation(format!(
                        "Query condition missed key schema element: {} (not a key attribute: {})",
                        hash.name, e.name
                    )));
                }
                let e = l.iter().find(|e| e.name == hash.name && e.op == "EQ").ok_or_else(missed)?;
                typed(e.args.first().ok_or_else(missed)?)
            }
        }
    }
}

fn flatten_and<'c>(c: &'c Cond, out: &mut Vec<&'c Cond>) {
    match c {
        Cond::And(a, b) => {
            flatten_and(a, out);
            flatten_and(b, out);
        }
        other => out.push(other),
    }
}

fn cond_names(c: &Cond, out: &mut Vec<String>) {
    let op = |o: &expr::Operand, out: &mut Vec<String>| {
        if let expr::Operand::Path(p) | expr::Operand::Size(p) = o
            && let Some(Elem::Name(n)) = p.first()
        {
            out.push(n.clone());
        }
    };
    match c {
        Cond::Cmp(a, _, b) | Cond::BeginsWith(a, b) | Cond::Contains(a, b) => {
            op(a, out);
            op(b, out);
        }
        Cond::Between(a, b, c) => {
            op(a, out);
            op(b, out);
            op(c, out);
        }
        Cond::In(a, l) => {
            op(a, out);
            l.iter().for_each(|x| op(x, out));
        }
        Cond::And(a, b) | Cond::Or(a, b) => {
            cond_names(a, out);
            cond_names(b, out);
        }
        Cond::Not(a) => cond_names(a, out),
        Cond::Exists(p) | Cond::NotExists(p) | Cond::Type(p, _) => {
            if let Some(Elem::Name(n)) = p.first() {
                out.push(n.clone());
            }
        }
    }
}

/// Legacy `AttributeUpdates`: (name, action, value).
fn parse_attribute_updates(m: &Map<String, Json>) -> Result<Vec<(String, String, Option<Value>)>> {
    let mut out = Vec::new();
    for (name, u) in m {
        let u = as_obj(u, "AttributeUpdates")?;
        let action = match u.get("Action") {
            None | Some(Json::Null) => "PUT".to_owned(),
            Some(Json::String(s)) if ["PUT", "ADD", "DELETE"].contains(&s.as_str()) => s.clone(),
            Some(other) => {
                return Err(DynamoError::validation(format!(
                    "1 validation error detected: Value '{}' at 'attributeUpdates.{name}.member.action' failed to satisfy constraint: Member must satisfy enum value set: [ADD, PUT, DELETE]",
                    other.as_str().unwrap_or("?")
                )));
            }
        };
        let value = u.get("Value").filter(|v| !v.is_null()).map(Value::from_json).transpose()?;
        if value.is_none() && action != "DELETE" {
            return Err(DynamoError::validation(
                "One or more parameter values were invalid: Only DELETE action is allowed when no attribute value is specified",
            ));
        }
        if action == "DELETE"
            && value.as_ref().is_some_and(|v| !matches!(v, Value::Ss(_) | Value::Ns(_) | Value::Bs(_)))
        {
            return Err(DynamoError::validation(
                "One or more parameter values were invalid: DELETE action with value is not supported for the type",
            ));
        }
        if action == "ADD"
            && value
                .as_ref()
                .is_some_and(|v| !matches!(v, Value::N(_) | Value::Ss(_) | Value::Ns(_) | Value::Bs(_) | Value::L(_)))
        {
            return Err(DynamoError::validation(
                "One or more parameter values were invalid: ADD action is not supported for the type",
            ));
        }
        out.push((name.clone(), action, value));
    }
    Ok(out)
}

fn apply_attribute_updates(list: &[(String, String, Option<Value>)], item: &mut Item) -> Result<()> {
    for (name, action, value) in list {
        match (action.as_str(), value) {
            ("PUT", Some(v)) => {
                item.insert(name.clone(), v.clone());
            }
            ("DELETE", None) => {
                item.remove(name);
            }
            ("DELETE", Some(v)) => match expr::delete_value(item.get(name), v).map_err(legacy_type)? {
                Some(nv) => {
                    item.insert(name.clone(), nv);
                }
                None => {
                    item.remove(name);
                }
            },
            ("ADD", Some(v)) => {
                let nv = expr::add_value(item.get(name), v, true).map_err(legacy_type)?;
                item.insert(name.clone(), nv);
            }
            _ => {}
        }
    }
    Ok(())
}

fn legacy_type(e: DynamoError) -> DynamoError {
    if e.message.contains("incorrect data type") {
        DynamoError::validation("One or more parameter values were invalid: Type mismatch for attribute to update")
    } else {
        e
    }
}
