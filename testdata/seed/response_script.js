var requestBody = JSON.parse(http.getRequestBodyUtf8());
var responseBody = http.getResponseBodyUtf8()
? JSON.parse(http.getResponseBodyUtf8())
: {};
var responseStatusCode = http.getResponseStatusCode();
var record = data.changedEntities[0];
if (responseStatusCode == 200) {
// Process the response from a successful request and
// build the data structure to pass into the Import
// API processor
write(JSON.stringify({
"medalliaRecordId" : record.a_surveyid,
"ticketSystemSynced": 1,
"ticketSystemSyncStatusCode": responseStatusCode,
"ticketSystemRecordId": responseBody.ticketId
}));
} else {
// Process the response from an unsuccessful request
write(JSON.stringify({
"medalliaRecordId" : record.a_surveyid,
"ticketSystemSynced": 2,
"ticketSystemSyncStatusCode": responseStatusCode,
"ticketSystemSyncError": responseBody.errorMessage
}));
}
