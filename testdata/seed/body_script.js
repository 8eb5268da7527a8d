// This JavaScript can be used to support either single-record
// or batch/bulk handling
// This function return the JSON to create a single record in a
// ticket tracking system
var getPayload = function(record) {
return {
"fields": {
"project": {
"key": "PRJ"
},
"summary":"[Medallia] Issue from customer feedback",
"description": (
"A customer has provided feedback.\n\n" +
"Likelihood to recommend: " + record.k_bp_main_score_scale + "\n" +
"Email: " + record.e_email + "\n\n" +
"Please contact this customer within 2 days and log the outcome " +
"in this issue."
),
"issuetype":{
"name":"Task"
}
}
};
};
// Get an array of all the feedback objects that are sent
// to the webhook. When not batching, this will be a
// single-element array.
var records = data.changedEntities;
// Process the record. When in batch-mode, this is typically done
// using a for() loop.
var payload = getPayload(record[0]);
// Write the JSON payload to the request buffer using write(),
// remembering to stringify it first
write(JSON.stringify(payload));
